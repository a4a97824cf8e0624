"""Training objectives: the masked (cloze) task or the causal next-item task; full or sampled softmax."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from bert4rec.data.records import FIRST_ITEM, PAD
from bert4rec.model.network import Bert4Rec

LOGITS_PER_CHUNK = 1 << 21  # scores per chunk of the full softmax: 8 MB of float32, near the cache
MIN_CHUNK_ROWS = 64  # rows per chunk however large the catalogue (a loop step must stay worth its overhead)


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
    count = tf.maximum(tf.cast(tf.size(labels), tf.float32), 1.0)
    if loss == "full_softmax":
        specials = tf.where(tf.range(model.num_tokens) < FIRST_ITEM, -1e9, 0.0)  # PAD/MASK: never the answer
        bias = tf.cast(model.output_bias, tf.float32) + specials
        return full_softmax_cross_entropy(transformed, tf.convert_to_tensor(model.item_embedding.embeddings), bias,
                                          labels) / count
    positive = tf.reduce_sum(
        tf.cast(transformed, tf.float32) * tf.cast(tf.gather(model.item_embedding.embeddings, labels), tf.float32), -1
    ) + tf.gather(model.output_bias, labels) - tf.gather(log_q, labels)
    negative = model.logits(transformed, negatives) - tf.gather(log_q, negatives)
    negative = tf.where(tf.equal(labels[:, None], negatives[None, :]), -1e9, negative)  # a drawn positive
    logits = tf.concat([positive[:, None], negative], -1)
    return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.zeros_like(labels), logits=logits)) / count


def chunk_rows(num_tokens: int) -> int:
    """Rows of logits per chunk: LOGITS_PER_CHUNK scores, MIN_CHUNK_ROWS rows at least.

    ML-1M's causal batch (25,600 rows x 3,418 items) ran its loss and gradients 1.5x faster in
    chunks of 2^20-2^21 scores than in one piece, 1.4x faster than in chunks of 2^23 (one run,
    side by side): a small chunk's scores are still in cache when the softmax reads them."""
    return max(MIN_CHUNK_ROWS, LOGITS_PER_CHUNK // num_tokens)


def softmax_cross_entropy(logits, labels):
    """(each row's cross-entropy of its label, its gradient: softmax minus the label's one-hot).

    The same max-shifted softmax as tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits, composed of
    ops that use both cores: on ML-1M's causal chunks (613 x 3,418 logits) it ran 2x faster than
    that fused kernel (one run, side by side), which was half of a training step's loss."""
    top = tf.reduce_max(logits, 1, keepdims=True)
    shifted = tf.exp(logits - top)
    total = tf.reduce_sum(shifted, 1, keepdims=True)
    picked = tf.gather(logits, labels, batch_dims=1)
    losses = tf.math.log(total[:, 0]) + top[:, 0] - picked
    label_slots = tf.stack([tf.range(tf.shape(labels)[0]), labels], 1)
    grad = tf.tensor_scatter_nd_sub(shifted * (1.0 / total), label_slots, tf.ones_like(picked))
    return losses, grad


@tf.custom_gradient
def full_softmax_cross_entropy(transformed, table, bias, labels):
    """Sum over rows of the cross-entropy of each row's label against every token (bias: float32,
    the output bias with PAD/MASK at -1e9), a chunk of rows at a time.

    The logits of a chunk exist only inside its loop step, and their gradient (softmax minus the
    label's one-hot) is turned into the small gradients of the rows, the table and the bias right
    there: memory is two chunks of (rows x catalogue) scores, not the whole batch's logits, their
    softmax and their gradient (the causal objective's 25,600 x 3,418 logits were 350 MB each).
    The logits' matmul runs in the rows' dtype (mixed precision), the softmax in float32.
    """
    dtype, rows = transformed.dtype, chunk_rows(table.shape[0])
    weights = tf.cast(table, dtype)
    count = tf.shape(transformed)[0]
    chunks = (count + rows - 1) // rows

    def step(i, total, row_grads, table_grad, bias_grad):
        chunk, chunk_labels = transformed[i * rows:(i + 1) * rows], labels[i * rows:(i + 1) * rows]
        logits = tf.cast(tf.matmul(chunk, weights, transpose_b=True), tf.float32) + bias
        losses, grad = softmax_cross_entropy(logits, chunk_labels)
        low = tf.cast(grad, dtype)
        row_grads = row_grads.write(i, tf.cast(tf.matmul(low, weights), tf.float32))
        table_grad += tf.cast(tf.matmul(low, chunk, transpose_a=True), tf.float32)
        return i + 1, total + tf.reduce_sum(losses), row_grads, table_grad, bias_grad + tf.reduce_sum(grad, 0)

    width = transformed.shape[-1]
    _, total, row_grads, table_grad, bias_grad = tf.while_loop(
        lambda i, *_: i < chunks, step,
        (tf.constant(0), tf.constant(0.0),
         tf.TensorArray(tf.float32, size=chunks + 1, infer_shape=False, element_shape=tf.TensorShape([None, width])),
         tf.zeros(tf.shape(table), tf.float32), tf.zeros(tf.shape(bias), tf.float32)),
        parallel_iterations=2)  # two chunks in flight: the next one's matmul overlaps this one's softmax
    row_grads = row_grads.write(chunks, tf.zeros([0, width], tf.float32))  # no rows (no chunk): an empty concat
    row_grads = tf.reshape(row_grads.concat(), tf.shape(transformed))

    def gradient(upstream):
        return (tf.cast(upstream * row_grads, dtype), tf.cast(upstream * table_grad, table.dtype),
                upstream * bias_grad, None)

    return total, gradient


def sampling_log_q(counts: np.ndarray, num_tokens: int, kind: str) -> np.ndarray:
    """log P(token) of the negative sampler; special tokens get -inf-like mass (never drawn)."""
    weights = np.zeros(num_tokens, dtype=np.float64)
    weights[FIRST_ITEM:] = 1.0 if kind == "uniform" else np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    probability = weights / weights.sum()
    return np.where(probability > 0, np.log(np.maximum(probability, 1e-30)), -1e9).astype(np.float32)
