"""Floating-point operations of a training step, counted from the shapes (2 per multiply-add),
so a measured speed can be set against the hardware's limit. Matrix products only: they are
nearly all of the arithmetic (norms, activations and softmaxes add a few percent, not counted).
Backward is counted as twice the forward.
"""

from __future__ import annotations

from bert4rec.params import TrainValParams


def encoder_flops(params: TrainValParams, batch: int, width: int) -> float:
    """Forward FLOPs of the encoder over a (batch, width) block (padding included: it is computed)."""
    m = params.model
    hidden, inner, tokens = m.hidden_size, m.intermediate_size, batch * width
    gated = m.block == "ligr"
    per_block = (2 * tokens * hidden * 3 * hidden  # fused QKV projection
                 + 2 * 2 * batch * width * width * hidden  # scores and context, all heads together
                 + 2 * tokens * hidden * hidden  # output projection
                 + 2 * (3 if gated else 2) * tokens * hidden * inner  # feed-forward (SwiGLU: two in, one out)
                 + (2 * 2 * tokens * hidden * hidden if gated else 0))  # the two residual gates
    return m.num_hidden_layers * per_block


def output_flops(params: TrainValParams, rows: int, num_tokens: int) -> float:
    """Forward FLOPs of the head and the output layer for `rows` predicted positions."""
    hidden = params.model.hidden_size
    candidates = num_tokens if params.loss == "full_softmax" else params.num_negatives + 1
    return 2 * rows * hidden * hidden + 2 * rows * hidden * candidates


def step_flops(params: TrainValParams, batch: int, width: int, rows: int, num_tokens: int) -> float:
    """Forward + backward FLOPs of one training step."""
    return 3 * (encoder_flops(params, batch, width) + output_flops(params, rows, num_tokens))
