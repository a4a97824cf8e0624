"""Static cloze masks (BERT's rule), vectorised over whole chunks of windows (numpy).

The dynamic masks drawn during training (model/inputs.py) follow the same rules.
"""

from __future__ import annotations

import numpy as np

from bert4rec.data.records import MASK, PAD


def truncate_short(windows: np.ndarray, lengths: np.ndarray, prob: float, rng: np.random.Generator):
    """With probability `prob`, keep only the most recent k items (k uniform in 2..length)."""
    if prob <= 0:
        return windows, lengths
    chosen = (rng.random(len(lengths)) < prob) & (lengths > 2)
    new = np.where(chosen, 2 + np.floor(rng.random(len(lengths)) * (lengths - 1)).astype(np.int64), lengths)
    new = np.minimum(new, lengths)
    keep = np.arange(windows.shape[1])[None, :] >= windows.shape[1] - new[:, None]
    return np.where(keep, windows, PAD).astype(np.int32), new


def cloze_mask(
    windows: np.ndarray,
    lengths: np.ndarray,
    rng: np.random.Generator,
    masked_lm_prob: float,
    max_predictions: int,
    mask_prob: float,
    num_tokens: int,
    first_item: int,
):
    """Mask round(length * masked_lm_prob) positions (1..max_predictions) of each window.

    A chosen position becomes [MASK] with probability mask_prob, else stays or becomes a random
    item with equal chance (BERT's rule). Returns (inputs, positions, labels); unused prediction
    slots have position 0 and label PAD.
    """
    count, width = windows.shape
    to_predict = np.clip(np.rint(lengths * masked_lm_prob).astype(np.int64), 1, max_predictions)
    keys = rng.random((count, width))
    keys[windows == PAD] = 2.0
    order = np.argsort(keys, axis=1, kind="stable")[:, :max_predictions]
    used = np.arange(max_predictions)[None, :] < to_predict[:, None]
    positions = np.sort(np.where(used, order, width), axis=1)
    used = positions < width
    positions = np.where(used, positions, 0).astype(np.int32)
    rows = np.repeat(np.arange(count), max_predictions).reshape(count, max_predictions)
    labels = np.where(used, windows[rows, positions], PAD).astype(np.int32)
    roll = rng.random((count, max_predictions))
    random_items = rng.integers(first_item, num_tokens, size=(count, max_predictions))
    replacement = np.where(
        roll < mask_prob,
        MASK,
        np.where(rng.random((count, max_predictions)) < 0.5, labels, random_items),
    ).astype(np.int32)
    inputs = windows.copy()
    inputs[rows[used], positions[used]] = replacement[used]
    return inputs, positions, labels


def mask_last(windows: np.ndarray, max_predictions: int):
    """The extra example per window: only the most recent item is masked."""
    count, width = windows.shape
    inputs = windows.copy()
    inputs[:, -1] = MASK
    positions = np.zeros((count, max_predictions), dtype=np.int32)
    positions[:, 0] = width - 1
    labels = np.zeros((count, max_predictions), dtype=np.int32)
    labels[:, 0] = windows[:, -1]
    return inputs, positions, labels
