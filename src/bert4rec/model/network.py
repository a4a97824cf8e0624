"""BERT4Rec in Keras 3: a bidirectional transformer over item tokens with a tied output layer.

Positions are counted from the right (the most recent item always has the last position
embedding), so a batch can be cut to its longest sequence without changing the model.
The model only encodes and scores; the training objective lives in `loss.py`.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from bert4rec.data.records import PAD
from bert4rec.model.layers import FusedDense, TransformerBlock, initializer
from bert4rec.params import ModelParams


class Bert4Rec(keras.Model):
    """Token ids (0 PAD, 1 MASK, items from 2) -> hidden states -> scores over every token.

    causal: each position attends only to itself and earlier ones (the SASRec-style objective);
    the next item is then read at the last item's position instead of a trailing [MASK].
    """

    def __init__(self, num_tokens: int, params: ModelParams, causal: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.num_tokens = num_tokens
        self.params = params
        self.causal = causal
        self.item_embedding = layers.Embedding(num_tokens, params.hidden_size,
                                               embeddings_initializer=initializer(params), name="item_embedding")
        self.position_embedding = layers.Embedding(params.max_position_embeddings, params.hidden_size,
                                                   embeddings_initializer=initializer(params), name="position_embedding")
        self.embedding_norm = layers.LayerNormalization(epsilon=1e-6, name="embedding_norm")
        self.dropout = layers.Dropout(params.hidden_dropout_prob)
        self.blocks = [TransformerBlock(params, causal, name=f"block_{i}") for i in range(params.num_hidden_layers)]
        self.head_dense = FusedDense(params.hidden_size, activation=params.hidden_act,
                                     kernel_initializer=initializer(params), name="head_dense")
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
        # PAD keys are hidden, but for the last position's: windows end with an item, so that only
        # matters to a row of PAD alone (no known item), which then reads the same at any width
        hidden_key = ops.logical_and(ops.equal(input_ids, PAD), ops.arange(length)[None, :] < length - 1)
        bias = ops.where(hidden_key, -1e9, 0.0)[:, None, None, :]
        for i, block in enumerate(self.blocks):
            x = block(x, bias, training=training, last_only=last_only and i == len(self.blocks) - 1)
        return x if self.final_norm is None else self.final_norm(x)

    def transform(self, hidden):
        """The masked-item head: dense + activation + layer norm, on gathered positions only."""
        return self.head_norm(self.head_dense(hidden))

    def logits(self, transformed, tokens=None):
        """Scores against every token or the given token ids (training; recommendations: recommend.ModelScorer)."""
        table = self.item_embedding.embeddings
        bias = self.output_bias
        if tokens is not None:
            table, bias = ops.take(table, tokens, axis=0), ops.take(bias, tokens, axis=0)
        scores = ops.matmul(transformed, ops.cast(ops.transpose(table), transformed.dtype))
        return ops.cast(scores, "float32") + ops.cast(bias, "float32")  # bias autocasts under mixed precision

    def call(self, input_ids, training=None):
        """Scores for the next item: the head at the last position (the [MASK] slot)."""
        return self.logits(self.transform(self.encode(input_ids, training=training, last_only=True)[:, -1]))


def build_model(num_tokens: int, params: ModelParams, length: int | None = None, causal: bool = False) -> Bert4Rec:
    model = Bert4Rec(num_tokens, params, causal, name="bert4rec")
    model(np.zeros((1, length or params.max_position_embeddings), dtype="int32"))
    return model
