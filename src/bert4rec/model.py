"""BERT4Rec in Keras 3: a bidirectional transformer over item tokens with a tied output layer.

Positions are counted from the right (the most recent item always has the last position
embedding), so a batch can be cut to its longest sequence without changing the model.
The model only encodes and scores; losses live in `masked_item_loss` (the task), and they
gather the masked positions before the output projection, which is where the time goes.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from bert4rec.config import ModelParams
from bert4rec.records import FIRST_ITEM, PAD


def _init(params: ModelParams):
    return keras.initializers.TruncatedNormal(stddev=params.initializer_range)


class FusedDense(layers.Dense):
    """Dense computed as one 2-D matmul + bias_add (+ GELU), a pattern oneDNN fuses into one
    kernel; Keras' (batch, length, features) form runs unfused, ~1.6x slower on CPU."""

    def call(self, inputs):
        shape = tf.shape(inputs)
        outputs = tf.nn.bias_add(tf.matmul(tf.reshape(inputs, [-1, shape[-1]]), self.kernel), self.bias)
        if self.activation is keras.activations.gelu:
            outputs = tf.nn.gelu(outputs, approximate=False)
        elif self.activation is not keras.activations.linear:
            outputs = self.activation(outputs)
        return tf.reshape(outputs, tf.concat([shape[:-1], [self.units]], 0))


class SelfAttention(layers.Layer):
    """Multi-head self-attention with one fused QKV projection (faster than three on CPU)."""

    def __init__(self, params: ModelParams, **kwargs):
        super().__init__(**kwargs)
        self.heads = params.num_attention_heads
        self.head_size = params.hidden_size // params.num_attention_heads
        self.qkv = FusedDense(3 * params.hidden_size, kernel_initializer=_init(params), name="qkv")
        self.out = FusedDense(params.hidden_size, kernel_initializer=_init(params), name="out")
        self.dropout = layers.Dropout(params.attention_probs_dropout_prob)

    def build(self, input_shape):
        self.qkv.build(input_shape)  # a last-only call reads its kernel without calling it
        self.out.build((*input_shape[:-1], self.heads * self.head_size))
        self.built = True

    def call(self, x, bias, training=None, last_only=False):
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        width = self.heads * self.head_size
        if last_only:  # only the last position is read out: one query instead of `length`
            kernel, offset = ops.cast(self.qkv.kernel, x.dtype), ops.cast(self.qkv.bias, x.dtype)
            q = ops.matmul(x[:, -1], kernel[:, :width]) + offset[:width]
            q = ops.transpose(ops.reshape(q, (batch, 1, self.heads, self.head_size)), (0, 2, 1, 3))
            kv = ops.matmul(ops.reshape(x, (-1, ops.shape(x)[2])), kernel[:, width:]) + offset[width:]
            kv = ops.transpose(ops.reshape(kv, (batch, length, 2, self.heads, self.head_size)), (2, 0, 3, 1, 4))
            k, v = kv[0], kv[1]
        else:
            qkv = ops.reshape(self.qkv(x), (batch, length, 3, self.heads, self.head_size))
            qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))  # (3, batch, heads, length, head_size)
            q, k, v = qkv[0], qkv[1], qkv[2]
        # Scale and padding bias ride along in the matmul (q gets a column of ones, k the bias),
        # so the (length x length) scores are written once instead of three times.
        q = ops.concatenate([q * (1.0 / math.sqrt(self.head_size)), ops.ones_like(q[..., :1])], axis=-1)
        key_bias = ops.broadcast_to(ops.cast(ops.transpose(bias, (0, 1, 3, 2)), k.dtype),
                                    (batch, self.heads, length, 1))
        k = ops.concatenate([k, key_bias], axis=-1)
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))
        probs = self.dropout(ops.softmax(scores, axis=-1), training=training)
        context = ops.transpose(ops.matmul(probs, v), (0, 2, 1, 3))
        return self.out(ops.reshape(context, (batch, ops.shape(q)[2], width)))


class TransformerBlock(layers.Layer):
    """Transformer block: attention and feed-forward, each with a residual and a layer norm.

    post (BERT): norm(x + sublayer(x)). pre: x + sublayer(norm(x)), which keeps an identity path
    through the stack and tolerates larger learning rates; the encoder then ends with one norm.
    """

    def __init__(self, params: ModelParams, **kwargs):
        super().__init__(**kwargs)
        self.pre_norm = params.layer_norm == "pre"
        self.attention = SelfAttention(params, name="attention")
        self.attention_norm = layers.LayerNormalization(epsilon=1e-6, name="attention_norm")
        self.inner = FusedDense(params.intermediate_size, activation=params.hidden_act,
                                kernel_initializer=_init(params), name="inner")
        self.outer = FusedDense(params.hidden_size, kernel_initializer=_init(params), name="outer")
        self.output_norm = layers.LayerNormalization(epsilon=1e-6, name="output_norm")
        self.dropout = layers.Dropout(params.hidden_dropout_prob)

    def call(self, x, bias, training=None, last_only=False):
        if self.pre_norm:
            attended = self.attention(self.attention_norm(x), bias, training=training, last_only=last_only)
            x = (x[:, -1:] if last_only else x) + self.dropout(attended, training=training)
            return x + self.dropout(self.outer(self.inner(self.output_norm(x))), training=training)
        attended = self.attention(x, bias, training=training, last_only=last_only)
        x = x[:, -1:] if last_only else x
        x = self.attention_norm(x + self.dropout(attended, training=training))
        return self.output_norm(x + self.dropout(self.outer(self.inner(x)), training=training))


class Bert4Rec(keras.Model):
    """Token ids (0 PAD, 1 MASK, items from 2) -> hidden states -> scores over every token."""

    def __init__(self, num_tokens: int, params: ModelParams, **kwargs):
        super().__init__(**kwargs)
        self.num_tokens = num_tokens
        self.params = params
        self.item_embedding = layers.Embedding(num_tokens, params.hidden_size,
                                               embeddings_initializer=_init(params), name="item_embedding")
        self.position_embedding = layers.Embedding(params.max_position_embeddings, params.hidden_size,
                                                   embeddings_initializer=_init(params), name="position_embedding")
        self.embedding_norm = layers.LayerNormalization(epsilon=1e-6, name="embedding_norm")
        self.dropout = layers.Dropout(params.hidden_dropout_prob)
        self.blocks = [TransformerBlock(params, name=f"block_{i}") for i in range(params.num_hidden_layers)]
        self.head_dense = FusedDense(params.hidden_size, activation=params.hidden_act,
                                     kernel_initializer=_init(params), name="head_dense")
        self.head_norm = layers.LayerNormalization(epsilon=1e-6, name="head_norm")
        self.final_norm = (layers.LayerNormalization(epsilon=1e-6, name="final_norm")
                           if params.layer_norm == "pre" else None)

    def build(self, input_shape=None):
        self.item_embedding.build((None,))
        self.output_bias = self.add_weight(shape=(self.num_tokens,), initializer="zeros", name="output_bias")
        self.built = True

    def encode(self, input_ids, training=None, last_only=False):
        """(batch, length) tokens -> (batch, length, hidden); length <= max_position_embeddings.

        last_only: the final block computes the last position only -> (batch, 1, hidden); scoring
        needs nothing else, and it skips most of that block's work.
        """
        length = ops.shape(input_ids)[1]
        positions = ops.arange(self.params.max_position_embeddings - length, self.params.max_position_embeddings)
        x = self.item_embedding(input_ids) + ops.expand_dims(self.position_embedding(positions), 0)
        x = self.dropout(self.embedding_norm(x), training=training)
        bias = ops.where(ops.equal(input_ids, PAD), -1e9, 0.0)[:, None, None, :]
        for i, block in enumerate(self.blocks):
            x = block(x, bias, training=training, last_only=last_only and i == len(self.blocks) - 1)
        return x if self.final_norm is None else self.final_norm(x)

    def transform(self, hidden):
        """The masked-item head: dense + activation + layer norm, on gathered positions only."""
        return self.head_norm(self.head_dense(hidden))

    def logits(self, transformed, tokens=None):
        """Scores against every token (tokens None) or against the given token ids only."""
        table = self.item_embedding.embeddings
        bias = self.output_bias
        if tokens is not None:
            table, bias = ops.take(table, tokens, axis=0), ops.take(bias, tokens, axis=0)
        scores = ops.matmul(transformed, ops.cast(ops.transpose(table), transformed.dtype))
        return ops.cast(scores, "float32") + ops.cast(bias, "float32")  # bias autocasts under mixed precision

    def call(self, input_ids, training=None):
        """Scores for the next item: the head at the last position (the [MASK] slot)."""
        return self.logits(self.transform(self.encode(input_ids, training=training, last_only=True)[:, -1]))


def build_model(num_tokens: int, params: ModelParams, length: int | None = None) -> Bert4Rec:
    model = Bert4Rec(num_tokens, params, name="bert4rec")
    model(np.zeros((1, length or params.max_position_embeddings), dtype="int32"))
    return model


def masked_item_loss(model: Bert4Rec, input_ids, positions, labels, loss: str = "full_softmax",
                     negatives=None, log_q=None, training=True):
    """Mean cross-entropy over the masked positions (label 0 = unused slot).

    Only the used slots reach the head and the output layer (short sequences leave many of the
    max_predictions_per_seq slots empty). full_softmax: against every item. sampled_softmax:
    against the given `negatives` (shared by the batch) with logQ correction `log_q` (log of
    each token's sampling probability).
    """
    hidden = model.encode(input_ids, training=training)
    used = labels > PAD
    gathered = tf.boolean_mask(tf.gather(hidden, positions, batch_dims=1), used)  # (used slots, hidden)
    labels = tf.boolean_mask(labels, used)
    transformed = model.transform(gathered)
    if loss == "full_softmax":
        logits = model.logits(transformed)
        logits = tf.concat([tf.fill([tf.shape(logits)[0], FIRST_ITEM], -1e9), logits[:, FIRST_ITEM:]], -1)
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
