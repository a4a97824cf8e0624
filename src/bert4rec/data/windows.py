"""The input windows every stage shares: sliding training windows and the evaluation input.

Sequences are left-padded, so the most recent item always sits at the last position, in
training and evaluation alike. An evaluation (and serving) input is the last max_seq_length - 1
items followed by [MASK]: the model predicts the item at the masked slot. The SavedModel's
serving function builds the same input in TensorFlow (model/export.py; tested to agree).
"""

from __future__ import annotations

import numpy as np

from bert4rec.data.records import MASK, PAD


def window_bounds(lengths: np.ndarray, window: int, step: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows of at most `window` items over each sequence, aligned to its end.

    A sequence longer than `window` gets windows ending at its end, then every `step` items
    earlier, plus one starting at 0 (step None: only the most recent window).
    Returns (row of the sequence, start, stop) per window, ordered by sequence then start.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if step is None:
        rows = np.arange(len(lengths))
        start = np.maximum(lengths - window, 0)
        return rows, start, lengths.copy()
    counts = np.where(lengths > window, (lengths - window - 1) // step + 2, 1)
    rows = np.repeat(np.arange(len(lengths)), counts)
    k = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)  # oldest first
    n = lengths[rows]
    start = np.where(k == 0, 0, n - window - (counts[rows] - 1 - k) * step)
    stop = np.minimum(start + window, n)
    return rows, start, stop


def gather_padded(flat: np.ndarray, begin: np.ndarray, end: np.ndarray, width: int) -> np.ndarray:
    """Rows flat[begin:end], left-padded with PAD to `width` columns (end - begin <= width)."""
    lengths = end - begin
    columns = np.arange(width)
    offset = width - lengths
    index = begin[:, None] + columns[None, :] - offset[:, None]
    valid = columns[None, :] >= offset[:, None]
    return np.where(valid, flat[np.where(valid, index, 0)], PAD).astype(np.int32)


def eval_inputs(flat: np.ndarray, begin: np.ndarray, end: np.ndarray, max_seq_length: int) -> np.ndarray:
    """Per user: the last max_seq_length - 1 items of flat[begin:end], left-padded, then [MASK]."""
    start = np.maximum(end - (max_seq_length - 1), begin)
    window = gather_padded(flat, start, end, max_seq_length - 1)
    return np.concatenate([window, np.full((len(begin), 1), MASK, dtype=np.int32)], axis=1)
