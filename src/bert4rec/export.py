"""SavedModel export: original item ids in, top-k original item ids and scores out.

The serving function does what the tfrecord + inference stages do: ids unknown to the
vocabulary (and any padding value, e.g. -1 or "") are dropped, the last max_seq_length - 1
items are kept and [MASK] appended, and every item of the input is removed from the candidates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from bert4rec.fileio import atomic_dir
from bert4rec.records import FIRST_ITEM, MASK, PAD


class Serving(tf.Module):
    def __init__(self, model, item_ids: np.ndarray, max_seq_length: int):
        super().__init__()
        self.model = model
        self.max_seq_length = max_seq_length
        self.num_tokens = model.num_tokens
        ids = np.asarray(item_ids)
        self.key_dtype = tf.string if ids.dtype.kind in "OUS" else tf.int64
        keys = tf.constant(ids.astype(str) if self.key_dtype == tf.string else ids.astype(np.int64))
        self.ids = tf.Variable(keys, trainable=False, name="item_ids")
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
        tokens = self.table.lookup(item_ids)
        known = tokens >= 0
        order = tf.argsort(tf.cast(known, tf.int32), axis=1, stable=True)  # unknowns to the left
        tokens = tf.where(tf.gather(known, order, batch_dims=1), tf.gather(tokens, order, batch_dims=1), PAD)
        batch = tf.shape(tokens)[0]
        window = self.max_seq_length - 1
        padded = tf.concat([tf.zeros([batch, window], tf.int32), tokens], 1)[:, -window:]
        inputs = tf.concat([padded, tf.fill([batch, 1], MASK)], 1)
        scores = self.model.logits(self.model.transform(self.model.encode(inputs, training=False, last_only=True)[:, -1]))
        rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(tokens))
        seen = tf.reshape(tf.stack([rows, tokens], -1), [-1, 2])
        scores = tf.tensor_scatter_nd_update(scores, seen, tf.fill([tf.shape(seen)[0]], -np.inf))
        scores = tf.where((tf.range(self.num_tokens) < FIRST_ITEM)[None, :], -np.inf, scores)
        values, top = tf.math.top_k(scores, k=tf.minimum(k, self.num_tokens - FIRST_ITEM))
        return {"item_ids": tf.gather(self.ids, top - FIRST_ITEM), "scores": values}


def export(model, item_ids: np.ndarray, max_seq_length: int, path: Path) -> Path:
    """Write models/<name>/saved_model atomically (signature `serving_default`)."""
    module = Serving(model, item_ids, max_seq_length)
    with atomic_dir(path) as tmp:
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve})
    return path
