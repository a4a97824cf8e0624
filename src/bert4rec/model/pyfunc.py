"""The recommender behind the MLflow pyfunc: a model folder's SavedModel, fed DataFrame rows.

MLflow's wrapper (workflow/tracking.py) only adapts this to `mlflow.pyfunc.PythonModel`; the
recommendation itself is the SavedModel's serving function, i.e. the inference stage's path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

DEFAULT_K = 10  # also the default of `k` in the signature the pyfunc is logged with (workflow/tracking.py)
INT64 = (-(2**63), 2**63 - 1)


class HistoryRecommender:
    """DataFrame with an `items` column (each user's history, original ids, oldest first) ->
    DataFrame with the top-k next `items` (original ids, seen ones excluded) and their `scores`.
    Ids compare as the raw stage reads them: integer ids as integers ("0042" is not 42), any id
    as text for a vocabulary of text ids; ids the model does not know are ignored."""

    def __init__(self, folder: Path):
        loaded = tf.saved_model.load(str(Path(folder) / "saved_model"))
        self.serve = loaded.signatures["serving_default"]
        self.strings = self.serve.structured_input_signature[1]["item_ids"].dtype == tf.string
        # rows are left-padded to one width with an id the vocabulary does not hold (-1 may be an item)
        self.pad = "" if self.strings else _absent(loaded.ids.numpy())

    def predict(self, frame: pd.DataFrame, k: int | None = None) -> pd.DataFrame:
        histories = [self._ids(history, row) for row, history in enumerate(_histories(frame))]
        k = _k(k)
        if not histories:
            return pd.DataFrame({"items": [], "scores": []})
        width = max((len(h) for h in histories), default=0)
        rows = [[self.pad] * (width - len(h)) + h for h in histories]
        ids = tf.constant(rows, tf.string) if self.strings else \
            tf.constant(np.array(rows, np.int64).reshape(len(rows), width))
        out = self.serve(item_ids=ids, k=tf.constant(k))
        found = np.isfinite(out["scores"].numpy())
        values = out["item_ids"].numpy()
        if self.strings:
            values = values.astype(str)
        return pd.DataFrame({
            "items": [list(v[f].tolist()) for v, f in zip(values, found)],
            "scores": [list(map(float, s[f])) for s, f in zip(out["scores"].numpy(), found)],
        })

    def _ids(self, history, row: int) -> list:
        """One history as the vocabulary's kind of id; ids it cannot hold become the pad (ignored)."""
        if history is None:
            return []
        if isinstance(history, (str, bytes)) or not isinstance(history, Iterable):
            raise ValueError(f"model input, row {row}: expected a list of item ids (oldest first), got {history!r}")
        return [_as_text(value) if self.strings else _as_integer(value, self.pad) for value in history]


def _histories(frame) -> list:
    if not isinstance(frame, pd.DataFrame) or "items" not in frame.columns:
        shown = list(frame.columns) if isinstance(frame, pd.DataFrame) else type(frame).__name__
        raise ValueError(f"model input: expected a DataFrame with an 'items' column (one list of item ids per "
                         f"user), got {shown}")
    return list(frame["items"])


def _k(k) -> int:
    value = DEFAULT_K if k is None else k
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not 1 <= value <= 2**31 - 1:
        raise ValueError(f"model params: k: expected a whole number >= 1, got {k!r}")
    return int(value)


def _as_text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _as_integer(value, pad: int) -> int:
    """An integer id; text counts only in its plain form ('42', not '0042' or '42.0'), as raw reads it."""
    if isinstance(value, (bool, np.bool_)):
        return pad
    if isinstance(value, (int, np.integer)):
        return int(value) if INT64[0] <= value <= INT64[1] else pad
    if isinstance(value, (float, np.floating)):  # a column of integer ids that pandas made floats
        return _as_integer(int(value), pad) if np.isfinite(value) and float(value).is_integer() else pad
    text = _as_text(value) if isinstance(value, (str, bytes)) else None
    if text is not None and re.fullmatch(r"-?[0-9]+", text) and str(int(text)) == text:
        return _as_integer(int(text), pad)
    return pad


def _absent(ids: np.ndarray) -> int:
    """An integer that is not an item id: -1 unless the vocabulary holds it."""
    taken = set(ids.tolist())
    candidate = -1
    while candidate in taken:
        candidate -= 1
    return candidate
