"""The transformer's building blocks, written for CPU speed (oneDNN-fusable matmuls)."""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import layers, ops

from bert4rec.params import ModelParams


def initializer(params: ModelParams):
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

    def __init__(self, params: ModelParams, causal: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.causal = causal
        self.heads = params.num_attention_heads
        self.head_size = params.hidden_size // params.num_attention_heads
        self.qkv = FusedDense(3 * params.hidden_size, kernel_initializer=initializer(params), name="qkv")
        self.out = FusedDense(params.hidden_size, kernel_initializer=initializer(params), name="out")
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
            k, v = ops.unstack(kv, 2, axis=0)
        else:
            qkv = ops.reshape(self.qkv(x), (batch, length, 3, self.heads, self.head_size))
            qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))  # (3, batch, heads, length, head_size)
            q, k, v = ops.unstack(qkv, 3, axis=0)  # its gradient is one stack (indexing: three zero-filled copies)
        # Scale and padding bias ride along in the matmul (q gets a column of ones, k the bias),
        # so the (length x length) scores are written once instead of three times.
        q = ops.concatenate([q * (1.0 / math.sqrt(self.head_size)), ops.ones_like(q[..., :1])], axis=-1)
        hidden = hidden_score(k.dtype)
        key_bias = ops.broadcast_to(ops.cast(ops.maximum(ops.transpose(bias, (0, 1, 3, 2)), hidden), k.dtype),
                                    (batch, self.heads, length, 1))
        k = ops.concatenate([k, key_bias], axis=-1)
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))
        if self.causal and not last_only:  # position i attends to positions <= i (the last one: to all)
            ahead = ops.arange(length)[None, :] > ops.arange(length)[:, None]
            scores = scores + ops.cast(ops.where(ahead, hidden, 0.0), scores.dtype)
        probs = self.dropout(ops.softmax(scores, axis=-1), training=training)
        context = ops.transpose(ops.matmul(probs, v), (0, 2, 1, 3))
        return self.out(ops.reshape(context, (batch, ops.shape(q)[2], width)))


def hidden_score(dtype) -> float:
    """What a hidden key adds to its score: -1e9, but in float16 (max 65,504), where -1e9 is -inf and
    a row of padding with every key hidden would be a softmax of -inf alone (NaN), a finite -3e4
    (twice that, a PAD key ahead, still finite)."""
    return -3e4 if keras.backend.standardize_dtype(dtype) == "float16" else -1e9


class TransformerBlock(layers.Layer):
    """Transformer block: attention and feed-forward, each with a residual and a layer norm.

    post (BERT): norm(x + sublayer(x)). pre: x + sublayer(norm(x)), which keeps an identity path
    through the stack and tolerates larger learning rates; the encoder then ends with one norm.
    ligr (LiGR, "From Features to Transformers", 2025; eSASRec's layer): pre, but each sublayer's
    output is scaled by a learned gate sigmoid(x W + b) of the residual stream, and the
    feed-forward is SwiGLU: (silu(x W1) * x W3) W2.
    """

    def __init__(self, params: ModelParams, causal: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.pre_norm = params.layer_norm == "pre"
        self.gated = params.block == "ligr"
        self.attention = SelfAttention(params, causal, name="attention")
        self.attention_norm = layers.LayerNormalization(epsilon=1e-6, name="attention_norm")
        inner_units = 2 * params.intermediate_size if self.gated else params.intermediate_size  # SwiGLU: W1 | W3
        self.inner = FusedDense(inner_units, activation=None if self.gated else params.hidden_act,
                                kernel_initializer=initializer(params), name="inner")
        self.outer = FusedDense(params.hidden_size, kernel_initializer=initializer(params), name="outer")
        self.output_norm = layers.LayerNormalization(epsilon=1e-6, name="output_norm")
        self.dropout = layers.Dropout(params.hidden_dropout_prob)
        self.attention_gate, self.output_gate = (
            [FusedDense(params.hidden_size, activation="sigmoid", kernel_initializer=initializer(params), name=name)
             for name in ("attention_gate", "output_gate")] if self.gated else [None, None])

    def feed_forward(self, x):
        hidden = self.inner(x)
        if self.gated:
            gate, value = tf.split(hidden, 2, axis=-1)  # (its gradient is one concat, no zero-filled copies)
            hidden = tf.nn.silu(gate) * value
        return self.outer(hidden)

    @staticmethod
    def residual(x, update, gate):
        """x + update; in a LiGR block the update is first scaled by gate(x)."""
        return x + (gate(x) * update if gate is not None else update)

    def call(self, x, bias, training=None, last_only=False):
        if self.pre_norm:
            attended = self.dropout(self.attention(self.attention_norm(x), bias, training=training,
                                                   last_only=last_only), training=training)
            x = self.residual(x[:, -1:] if last_only else x, attended, self.attention_gate)
            return self.residual(x, self.dropout(self.feed_forward(self.output_norm(x)), training=training),
                                 self.output_gate)
        attended = self.attention(x, bias, training=training, last_only=last_only)
        x = x[:, -1:] if last_only else x
        x = self.attention_norm(x + self.dropout(attended, training=training))
        return self.output_norm(x + self.dropout(self.feed_forward(x), training=training))
