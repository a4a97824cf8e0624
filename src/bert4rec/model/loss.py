"""Training objectives: the masked (cloze) task or the causal next-item task; full or sampled softmax."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from bert4rec.data.records import FIRST_ITEM, PAD
from bert4rec.model.network import Bert4Rec


def masked_item_loss(model: Bert4Rec, input_ids, positions, labels, loss: str = "full_softmax",
                     negatives=None, log_q=None, training=True, encode=None):
    """BERT4Rec's cloze task: mean cross-entropy over the masked positions (label 0 = unused slot).

    Only the used slots reach the head and the output layer (short sequences leave many of the
    max_predictions_per_seq slots empty). `encode`: the model's encoder, compiled or not.
    """
    hidden = (encode or model.encode)(input_ids, training=training)
    used = labels > PAD
    gathered = tf.boolean_mask(tf.gather(hidden, positions, batch_dims=1), used)  # (used slots, hidden)
    return item_cross_entropy(model, model.transform(gathered), tf.boolean_mask(labels, used), loss, negatives, log_q)


def causal_item_loss(model: Bert4Rec, windows, loss: str = "full_softmax", negatives=None, log_q=None,
                     training=True, encode=None):
    """SASRec-style: every item of a left-padded window predicts the item after it, from the
    items up to it (the causal encoder hides the later ones); mean cross-entropy over them."""
    inputs, labels = windows[:, :-1], windows[:, 1:]
    hidden = (encode or model.encode)(inputs, training=training)
    used = (inputs > PAD) & (labels > PAD)
    gathered = tf.boolean_mask(hidden, used)
    return item_cross_entropy(model, model.transform(gathered), tf.boolean_mask(labels, used), loss, negatives, log_q)


def item_cross_entropy(model: Bert4Rec, transformed, labels, loss: str, negatives, log_q):
    """Mean cross-entropy of each row's label. full_softmax: against every item. sampled_softmax:
    against the given `negatives` (shared by the batch) with logQ correction `log_q` (log of each
    token's sampling probability)."""
    if loss == "full_softmax":
        specials = tf.where(tf.range(model.num_tokens) < FIRST_ITEM, -1e9, 0.0)  # PAD/MASK: never the answer
        logits = model.logits(transformed) + specials  # (not a slice: a slice's gradient is a zero-filled copy)
        per_slot = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    else:
        positive = tf.reduce_sum(
            tf.cast(transformed, tf.float32) * tf.cast(tf.gather(model.item_embedding.embeddings, labels), tf.float32), -1
        ) + tf.gather(model.output_bias, labels) - tf.gather(log_q, labels)
        negative = model.logits(transformed, negatives) - tf.gather(log_q, negatives)
        negative = tf.where(tf.equal(labels[:, None], negatives[None, :]), -1e9, negative)  # a drawn positive
        logits = tf.concat([positive[:, None], negative], -1)
        per_slot = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.zeros_like(labels), logits=logits)
    return tf.reduce_sum(per_slot) / tf.maximum(tf.cast(tf.size(labels), tf.float32), 1.0)


def sampling_log_q(counts: np.ndarray, num_tokens: int, kind: str) -> np.ndarray:
    """log P(token) of the negative sampler; special tokens get -inf-like mass (never drawn)."""
    weights = np.zeros(num_tokens, dtype=np.float64)
    weights[FIRST_ITEM:] = 1.0 if kind == "uniform" else np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    probability = weights / weights.sum()
    return np.where(probability > 0, np.log(np.maximum(probability, 1e-30)), -1e9).astype(np.float32)
