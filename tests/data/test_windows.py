import numpy as np

from bert4rec.data.records import MASK, PAD
from bert4rec.data.windows import eval_inputs, gather_padded, window_bounds


def test_windows_end_aligned_with_step():
    rows, start, stop = window_bounds(np.array([5, 12, 25]), 10, 5)
    assert rows.tolist() == [0, 1, 1, 2, 2, 2, 2]
    assert list(zip(start.tolist(), stop.tolist())) == [(0, 5), (0, 10), (2, 12), (0, 10), (5, 15), (10, 20), (15, 25)]


def test_windows_without_sliding_keep_the_most_recent():
    rows, start, stop = window_bounds(np.array([5, 25]), 10, None)
    assert list(zip(start.tolist(), stop.tolist())) == [(0, 5), (15, 25)]


def test_gather_padded_left_pads():
    flat = np.arange(10, 20)
    out = gather_padded(flat, np.array([0, 5]), np.array([2, 10]), 4)
    assert out.tolist() == [[PAD, PAD, 10, 11], [16, 17, 18, 19]]


def test_eval_input_is_the_last_items_then_mask():
    flat = np.arange(10, 30, dtype=np.int32)
    out = eval_inputs(flat, np.array([0, 5, 5]), np.array([3, 20, 5]), 5)
    assert out.tolist() == [[PAD, 10, 11, 12, MASK], [26, 27, 28, 29, MASK], [PAD, PAD, PAD, PAD, MASK]]
