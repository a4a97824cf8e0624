"""The recommender behind the MLflow pyfunc: a model folder's SavedModel, fed DataFrame rows.

MLflow's wrapper (workflow/tracking.py) only adapts this to `mlflow.pyfunc.PythonModel`; the
recommendation itself is the SavedModel's serving function, i.e. the inference stage's path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

DEFAULT_K = 10


class HistoryRecommender:
    """DataFrame with an `items` column (each user's history, original ids, oldest first) ->
    DataFrame with the top-k next `items` (original ids, seen ones excluded) and their `scores`."""

    def __init__(self, folder: Path):
        self.serve = tf.saved_model.load(str(Path(folder) / "saved_model")).signatures["serving_default"]
        self.strings = self.serve.structured_input_signature[1]["item_ids"].dtype == tf.string

    def predict(self, frame: pd.DataFrame, k: int | None = None) -> pd.DataFrame:
        histories = [list(history) for history in frame["items"]]
        width = max((len(h) for h in histories), default=0)
        pad = "" if self.strings else -1
        rows = np.array([[pad] * (width - len(h)) + h for h in histories], dtype=object if self.strings else np.int64)
        ids = tf.constant(rows.astype(str) if self.strings else rows.reshape(len(histories), width))
        out = self.serve(item_ids=ids, k=tf.constant(int(k or DEFAULT_K)))
        found = np.isfinite(out["scores"].numpy())
        values = out["item_ids"].numpy()
        if self.strings:
            values = values.astype(str)
        return pd.DataFrame({
            "items": [list(v[f].tolist()) for v, f in zip(values, found)],
            "scores": [list(map(float, s[f])) for s, f in zip(out["scores"].numpy(), found)],
        })
