"""Hand-encoded TFRecords must be exactly what TensorFlow reads."""

import numpy as np
import tensorflow as tf

from bert4rec.data.records import encode_example, shard_name, write_record


def test_tensorflow_parses_hand_encoded_examples(tmp_path):
    path = tmp_path / shard_name("train", 0, 1)
    rows = [
        {"input_ids": np.arange(300, dtype=np.int32), "history": np.array([], dtype=np.int32)},
        {"input_ids": np.array([-5, 2**31 - 1], dtype=np.int32), "history": np.arange(7, dtype=np.int32)},
    ]
    with open(path, "wb") as handle:
        for row in rows:
            write_record(handle, encode_example(row))
    spec = {key: tf.io.FixedLenFeature([], tf.string) for key in ("input_ids", "history")}
    parsed = [tf.io.parse_single_example(raw, spec) for raw in tf.data.TFRecordDataset([str(path)])]
    assert len(parsed) == 2
    for row, example in zip(rows, parsed):
        for key, values in row.items():
            np.testing.assert_array_equal(tf.io.decode_raw(example[key], tf.int32).numpy(), values)


def test_encoding_is_deterministic_and_ordered():
    a = encode_example({"x": np.array([1, 2]), "y": np.array([3])})
    assert a == encode_example({"x": np.array([1, 2]), "y": np.array([3])})
    assert a != encode_example({"y": np.array([3]), "x": np.array([1, 2])})


def test_shard_names():
    assert shard_name("valid", 3, 16) == "valid-00003-of-00016.tfrecord"
