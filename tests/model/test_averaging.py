"""The weights' moving average: its arithmetic, its warm-up, and the swap in and out of a model."""

import numpy as np
import tensorflow as tf

from bert4rec.model.averaging import WeightAverage


def test_average_follows_early_then_keeps_the_set_decay():
    weight = tf.Variable([0.0, 10.0])
    average = WeightAverage([weight], decay=0.5)
    weight.assign([1.0, 0.0])
    average.update(0)  # step 0: keep min(0.5, 1/10) = 0.1 of the old average
    np.testing.assert_allclose(average.values()[0], [0.9, 1.0], rtol=1e-6)
    weight.assign([2.0, 2.0])
    average.update(1000)  # late: keep 0.5
    np.testing.assert_allclose(average.values()[0], [1.45, 1.5], rtol=1e-6)


def test_applied_swaps_the_averages_in_and_the_weights_back():
    weights = [tf.Variable([1.0, 2.0]), tf.Variable([[3.0]])]
    average = WeightAverage(weights, decay=0.9)
    average.load([np.array([5.0, 6.0], np.float32), np.array([[7.0]], np.float32)])
    with average.applied():
        np.testing.assert_array_equal(weights[0].numpy(), [5.0, 6.0])
        np.testing.assert_array_equal(weights[1].numpy(), [[7.0]])
    np.testing.assert_array_equal(weights[0].numpy(), [1.0, 2.0])
    np.testing.assert_array_equal(weights[1].numpy(), [[3.0]])
    average.reset()
    np.testing.assert_array_equal(average.values()[1], [[3.0]])


def test_weights_come_back_when_the_block_fails():
    weight = tf.Variable([1.0])
    average = WeightAverage([weight], decay=0.9)
    average.load([np.array([4.0], np.float32)])
    try:
        with average.applied():
            raise RuntimeError("validation failed")
    except RuntimeError:
        pass
    assert weight.numpy().tolist() == [1.0]
