"""Lazy AdamW: sparse gradients update only the rows they touch, exactly as AdamW would."""

import keras
import numpy as np
import tensorflow as tf

from bert4rec.model.optimizer import LazyAdamW, clip_by_global_norm

ROWS = np.arange(12, dtype=np.float32).reshape(4, 3) / 10


def run(optimizer, gradients, decayed=False):
    variable = keras.Variable(ROWS.copy())
    if decayed:
        optimizer.exclude_from_weight_decay(var_list=[variable])
        optimizer._decayed_rows = [variable]
    optimizer.build([variable])
    for gradient in gradients:
        optimizer.apply_gradients([(gradient, variable)])
    return variable.numpy()


def sparse(values, rows):
    return tf.IndexedSlices(tf.constant(values, tf.float32), tf.constant(rows), tf.constant([4, 3]))


def test_sparse_gradients_over_every_row_equal_dense_adamw():
    steps = [([[1, 2, 3], [0.5, 0, 1], [4, 4, 4], [1, 1, 1], [2, 0, 0]], [0, 1, 2, 3, 0]),
             ([[-1, 0, 1], [3, 2, 1], [0, 0, 1], [1, 0, 1]], [3, 2, 1, 0])]
    dense = [tf.math.unsorted_segment_sum(tf.constant(v, tf.float32), tf.constant(r), 4) for v, r in steps]
    settings = dict(learning_rate=0.1, weight_decay=0.0, beta_2=0.98, epsilon=1e-6)
    lazy = run(LazyAdamW(**settings), [sparse(v, r) for v, r in steps])
    reference = run(keras.optimizers.AdamW(**settings), dense)
    np.testing.assert_allclose(lazy, reference, rtol=1e-5, atol=1e-6)  # float32 rounding


def test_rows_no_gradient_touches_keep_their_values_and_touched_rows_are_decayed():
    settings = dict(learning_rate=0.1, weight_decay=0.5, beta_2=0.98, epsilon=1e-6)
    out = run(LazyAdamW(**settings), [sparse([[1, 1, 1]], [2])], decayed=True)
    np.testing.assert_array_equal(out[[0, 1, 3]], ROWS[[0, 1, 3]])
    dense = run(keras.optimizers.AdamW(**settings), [tf.constant([[0, 0, 0], [0, 0, 0], [1, 1, 1], [0, 0, 0]], tf.float32)])
    np.testing.assert_allclose(out[2], dense[2], rtol=1e-6)


def test_clipping_matches_keras_and_keeps_sparse_gradients_sparse():
    grads = [tf.constant([[3.0, 4.0]]), sparse([[1, 2, 2], [1, 2, 2]], [1, 1])]
    clipped = clip_by_global_norm(grads, 2.0)
    assert isinstance(clipped[1], tf.IndexedSlices) and clipped[1].indices.numpy().tolist() == [1]
    norm = np.sqrt(25 + 4 + 16 + 16)  # the duplicate rows are summed first: [2, 4, 4]
    np.testing.assert_allclose(clipped[0].numpy(), [[3 * 2 / norm, 4 * 2 / norm]], rtol=1e-6)
    np.testing.assert_allclose(clipped[1].values.numpy(), [[2 * 2 / norm, 4 * 2 / norm, 4 * 2 / norm]], rtol=1e-6)
    untouched = clip_by_global_norm([tf.constant([0.3, 0.4])], 2.0)[0]
    np.testing.assert_allclose(untouched.numpy(), [0.3, 0.4], rtol=1e-6)
