"""Training on several devices or machines through tf.distribute (TensorFlow's own engine).

`multi_worker_mirrored` reads the cluster from TF_CONFIG (one JSON per process:
{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}); worker 0
(or the "chief") writes the model, every worker reads its own shards of the records.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from bert4rec.errors import UserError

log = logging.getLogger("bert4rec.train_val")


@dataclass(frozen=True)
class Worker:
    """This process's place in the cluster (index 0 of 1 without TF_CONFIG)."""

    index: int = 0
    count: int = 1
    chief: bool = True


def cluster_worker() -> Worker:
    """The worker TF_CONFIG describes; a malformed TF_CONFIG is one clear error."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return Worker()
    try:
        config = json.loads(raw)
        cluster, task = config.get("cluster", {}), config["task"]
        workers = list(cluster.get("chief", [])) + list(cluster.get("worker", []))
        kind, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"TF_CONFIG is not a valid cluster description ({error}); expected "
                        '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}') from None
    listed = len(cluster.get(kind, [])) if kind in ("chief", "worker") else 0
    if not 0 <= index < listed:
        raise UserError(f"TF_CONFIG: task {{'type': {kind!r}, 'index': {index}}} is not in the cluster, which lists "
                        f"{len(cluster.get('chief', []))} chief and {len(cluster.get('worker', []))} worker task(s); "
                        "expected a chief or worker index below its count")
    position = index if kind == "chief" else index + len(cluster.get("chief", []))
    chief = kind == "chief" or (kind == "worker" and index == 0 and not cluster.get("chief"))
    return Worker(position, max(len(workers), 1), chief)


def make_strategy(kind: str) -> tf.distribute.Strategy:
    """default: one device; mirrored: all local GPUs (or logical CPUs); multi_worker: TF_CONFIG."""
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        ops = None if gpus else tf.distribute.ReductionToOneDevice()
        return tf.distribute.MirroredStrategy(devices=devices, cross_device_ops=ops)
    if "TF_CONFIG" not in os.environ:
        log.warning("multi_worker_mirrored without TF_CONFIG: running as a single worker")
    return tf.distribute.MultiWorkerMirroredStrategy()


def common_step(strategy: tf.distribute.Strategy, worker: Worker, steps: list[int]) -> int | None:
    """The newest checkpoint step every worker holds (each saved its own; a worker killed while
    saving may lack the newest), agreed through one all-reduce; None when there is none."""
    if worker.count == 1:
        return max(steps) if steps else None
    slots = 64
    table = np.zeros((worker.count, slots), np.float32)  # steps are exact below 2**24
    table[worker.index, :min(len(steps), slots)] = sorted(steps)[-slots:]
    table[worker.index, len(steps):] = -1

    def local():
        return tf.constant(table)

    @tf.function
    def gather():
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(local), axis=None)

    merged = gather().numpy()
    shared = set.intersection(*({int(s) for s in row if s >= 0} for row in merged))
    return max(shared) if shared else None
