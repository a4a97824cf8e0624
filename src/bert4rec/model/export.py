"""SavedModel export: original item ids in, top-k original item ids and scores out.

The serving function builds the evaluation input in TensorFlow (ids unknown to the vocabulary,
e.g. a padding value -1 or "", are dropped; the last max_seq_length - 1 items are kept and
[MASK] appended: data/windows.eval_inputs' rule) and recommends through the same Recommender
as the inference stage, with every item of the input removed from the candidates. Slots past
the available candidates come back with score -inf and item id -1 (or "").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from bert4rec.data.records import FIRST_ITEM, MASK, PAD
from bert4rec.fileio import atomic_dir
from bert4rec.model.recommend import ModelScorer, Recommender


def window_tokens(tokens, max_seq_length: int):
    """(batch, any) tokens, -1 = unknown -> (batch, max_seq_length): last items, left-padded, [MASK]."""
    known = tokens >= 0
    order = tf.argsort(tf.cast(known, tf.int32), axis=1, stable=True)  # unknowns to the left
    tokens = tf.where(tf.gather(known, order, batch_dims=1), tf.gather(tokens, order, batch_dims=1), PAD)
    batch, window = tf.shape(tokens)[0], max_seq_length - 1
    padded = tf.concat([tf.zeros([batch, window], tf.int32), tokens], 1)[:, -window:]
    return tf.concat([padded, tf.fill([batch, 1], MASK)], 1), tokens


class Serving(tf.Module):
    def __init__(self, model, item_ids: np.ndarray, max_seq_length: int):
        super().__init__()
        self.model = model
        self.scorer = ModelScorer(model)  # an attribute, so that its scoring table is saved
        self.recommender = Recommender(self.scorer, with_rank=False)
        self.max_seq_length = max_seq_length
        ids = np.asarray(item_ids)
        self.key_dtype = tf.string if ids.dtype.kind in "OUS" else tf.int64
        keys = tf.constant(ids.astype(str) if self.key_dtype == tf.string else ids.astype(np.int64))
        self.ids = tf.Variable(keys, trainable=False, name="item_ids")
        self.missing = tf.constant("" if self.key_dtype == tf.string else -1, self.key_dtype)
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(keys, tf.range(FIRST_ITEM, FIRST_ITEM + len(ids), dtype=tf.int32)),
            default_value=-1,
        )
        self.serve = tf.function(
            self._serve,
            input_signature=[tf.TensorSpec([None, None], self.key_dtype, name="item_ids"),
                             tf.TensorSpec([], tf.int32, name="k")],
        )

    def _serve(self, item_ids, k):
        inputs, seen = window_tokens(self.table.lookup(item_ids), self.max_seq_length)
        batch = tf.shape(inputs)[0]
        k = tf.minimum(k, self.model.num_tokens - FIRST_ITEM)
        out = self.recommender._run(inputs, seen, tf.zeros([batch], tf.int32), tf.zeros([batch, 0], tf.int32), k)
        found = out["scores"] > float("-inf")
        ids = tf.gather(self.ids, tf.maximum(out["tokens"] - FIRST_ITEM, 0))
        return {"item_ids": tf.where(found, ids, self.missing), "scores": out["scores"]}


def export(model, item_ids: np.ndarray, max_seq_length: int, path: Path) -> Path:
    """Write models/<name>/saved_model atomically (signature `serving_default`)."""
    module = Serving(model, item_ids, max_seq_length)
    with atomic_dir(path) as tmp:
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve})
    return path
