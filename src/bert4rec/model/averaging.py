"""An exponential moving average of the trainable weights (Polyak averaging): validation, the
best weights and the saved model use the average, which smooths the last steps' noise out of
the weights at the cost of one pass over the parameters per step.

The decay starts low and grows with the step, min(decay, (1 + step) / (10 + step)), as in
TensorFlow's ExponentialMovingAverage with num_updates: early on the average follows the
weights closely instead of holding on to the random initialisation (or a fine-tuned model's
parent) for thousands of steps.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf


class WeightAverage:
    """Averages of `variables`; `update(step)` after each optimizer step, inside the compiled
    step's cross-replica context, so under a distribution strategy every replica's copy moves."""

    def __init__(self, variables: list, decay: float):
        self.variables, self.decay = list(variables), decay
        self.averages = [tf.Variable(tf.convert_to_tensor(v), trainable=False, name=f"average_{i}")
                         for i, v in enumerate(self.variables)]

    def update(self, step) -> None:
        step = tf.cast(step, tf.float32)
        keep = tf.minimum(tf.constant(self.decay, tf.float32), (1.0 + step) / (10.0 + step))
        for average, variable in zip(self.averages, self.variables):
            value = tf.convert_to_tensor(variable)
            average.assign_sub((average - value) * tf.cast(1.0 - keep, value.dtype))

    def reset(self) -> None:
        """The averages become the current weights (a warm-started model's first step)."""
        for average, variable in zip(self.averages, self.variables):
            average.assign(tf.convert_to_tensor(variable))

    def values(self) -> list:
        return [average.numpy() for average in self.averages]

    def load(self, values: list) -> None:
        for average, value in zip(self.averages, values):
            average.assign(value)

    @contextlib.contextmanager
    def applied(self):
        """The model holds the averages inside the block and its own weights again after it."""
        current = [tf.identity(tf.convert_to_tensor(v)) for v in self.variables]
        for variable, average in zip(self.variables, self.averages):
            variable.assign(average)
        try:
            yield
        finally:
            for variable, value in zip(self.variables, current):
                variable.assign(value)
