"""TFRecord files of tf.train.Example, written without importing TensorFlow.

The data stages stay light (no 500 MB TensorFlow import) and the bytes are fully determined by
the data: every feature is a bytes_list holding a little-endian int32 array, encoded by hand in
a fixed key order (protobuf's own map order is not guaranteed).
"""

from __future__ import annotations

import functools
import struct
from typing import BinaryIO

import google_crc32c
import numpy as np

PAD, MASK, FIRST_ITEM = 0, 1, 2  # token ids: item with vocabulary index k has token k + 2


def _varint_slow(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_SMALL = [_varint_slow(value) for value in range(1 << 14)]  # lengths are nearly always small


def _varint(value: int) -> bytes:
    return _SMALL[value] if value < 16384 else _varint_slow(value)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


@functools.lru_cache(maxsize=64)
def _key(key: str) -> bytes:
    return _field(1, key.encode()) + b"\x12"  # map entry: key, then the tag of its value


def encode_example(features: dict[str, np.ndarray]) -> bytes:
    """Example{features{feature{key: bytes_list{value: int32 bytes}}}} with keys in given order."""
    entries = []
    for key, values in features.items():
        data = np.ascontiguousarray(values, dtype="<i4").tobytes()
        bytes_list = b"\x0a" + _varint(len(data)) + data  # BytesList.value
        feature = b"\x0a" + _varint(len(bytes_list)) + bytes_list  # Feature.bytes_list
        entry = _key(key) + _varint(len(feature)) + feature
        entries.append(b"\x0a" + _varint(len(entry)) + entry)  # Features.feature
    return _field(1, b"".join(entries))  # Example.features


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def write_record(handle: BinaryIO, record: bytes) -> None:
    length = struct.pack("<Q", len(record))
    handle.write(length + struct.pack("<I", _masked_crc(length)) + record + struct.pack("<I", _masked_crc(record)))


def shard_name(split: str, shard: int, num_shards: int) -> str:
    return f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"
