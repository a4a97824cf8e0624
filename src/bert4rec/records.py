"""TFRecord files of tf.train.Example, written without importing TensorFlow.

The data stages stay light (no 500 MB TensorFlow import) and the bytes are fully determined by
the data: every feature is a bytes_list holding a little-endian int32 array, encoded by hand in
a fixed key order (protobuf's own map order is not guaranteed).
"""

from __future__ import annotations

import struct
from typing import BinaryIO

import google_crc32c
import numpy as np

PAD, MASK, FIRST_ITEM = 0, 1, 2  # token ids: item with vocabulary index k has token k + 2


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def encode_example(features: dict[str, np.ndarray]) -> bytes:
    """Example{features{feature{key: bytes_list{value: int32 bytes}}}} with keys in given order."""
    entries = b""
    for key, values in features.items():
        data = np.ascontiguousarray(values, dtype="<i4").tobytes()
        feature = _field(1, _field(1, data))  # Feature.bytes_list -> BytesList.value
        entries += _field(1, _field(1, key.encode()) + _field(2, feature))  # map entry
    return _field(1, entries)  # Example.features


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def write_record(handle: BinaryIO, record: bytes) -> None:
    length = struct.pack("<Q", len(record))
    handle.write(length + struct.pack("<I", _masked_crc(length)) + record + struct.pack("<I", _masked_crc(record)))


def shard_name(split: str, shard: int, num_shards: int) -> str:
    return f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"
