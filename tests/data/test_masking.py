import numpy as np

from bert4rec.data import masking
from bert4rec.data.windows import gather_padded
from bert4rec.data.records import MASK, PAD


def test_cloze_mask_rules():
    rng = np.random.default_rng(0)
    width, count = 50, 400
    lengths = rng.integers(1, width + 1, size=count)
    windows = gather_padded(
        rng.integers(2, 100, size=count * width), np.arange(count) * width, np.arange(count) * width + lengths, width
    )
    inputs, positions, labels = masking.cloze_mask(windows, lengths, rng, 0.2, 8, 1.0, 100, 2)
    used = labels != PAD
    expected = np.clip(np.rint(lengths * 0.2), 1, 8)
    np.testing.assert_array_equal(used.sum(1), expected)
    for row in range(count):
        chosen = positions[row][used[row]]
        assert (np.diff(chosen) > 0).all()  # sorted, distinct
        assert (windows[row, chosen] != PAD).all()  # never a padding position
        np.testing.assert_array_equal(labels[row][used[row]], windows[row, chosen])
        assert (inputs[row, chosen] == MASK).all()  # mask_prob 1.0
        others = np.setdiff1d(np.arange(width), chosen)
        np.testing.assert_array_equal(inputs[row, others], windows[row, others])


def test_cloze_mask_keeps_or_replaces_when_mask_prob_zero():
    rng = np.random.default_rng(1)
    windows = np.tile(np.arange(2, 42, dtype=np.int32), (200, 1))
    inputs, positions, labels = masking.cloze_mask(windows, np.full(200, 40), rng, 0.5, 20, 0.0, 1000, 2)
    chosen = inputs[np.arange(200)[:, None], positions]
    assert not (chosen == MASK).any()
    kept = (chosen == labels).mean()
    assert 0.4 < kept < 0.6  # half kept, half random items


def test_mask_last_and_truncate():
    windows = np.array([[0, 5, 6, 7], [2, 3, 4, 9]], dtype=np.int32)
    inputs, positions, labels = masking.mask_last(windows, 3)
    assert inputs[:, -1].tolist() == [MASK, MASK]
    assert positions.tolist() == [[3, 0, 0], [3, 0, 0]]
    assert labels.tolist() == [[7, 0, 0], [9, 0, 0]]
    short, lengths = masking.truncate_short(windows, np.array([3, 4]), 1.0, np.random.default_rng(0))
    assert (lengths >= 2).all() and (lengths <= [3, 4]).all()
    for row, n in enumerate(lengths):
        assert (short[row, : 4 - n] == PAD).all() and (short[row, 4 - n :] == windows[row, 4 - n :]).all()
