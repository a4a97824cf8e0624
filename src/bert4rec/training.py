"""The machinery behind the train_val stage: strategy, optimizer, train step, checkpoints.

Checkpoints are plain .npz files (model weights, optimizer slots, loop state) written
atomically, so a corrupt or missing one is reported by name and never half-written.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from bert4rec import dataset, modelstore
from bert4rec.config import TrainValParams
from bert4rec.model import build_model, masked_item_loss, sampling_log_q

log = logging.getLogger("bert4rec.train_val")


def setup_runtime(params: TrainValParams) -> None:
    """Seeds, op determinism and mixed precision: must run before any model is built."""
    keras.utils.set_random_seed(params.seed)
    if params.deterministic_ops:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy("float32" if params.mixed_precision == "off" else params.mixed_precision)


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


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the model (multi-worker: the chief, else worker 0)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not cluster:
        return True
    if "chief" in cluster:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def learning_rate(params: TrainValParams, step: int, elapsed: float | None = None) -> float:
    """Linear warm-up to the peak rate, then linear decay to zero at num_train_steps.

    With training_time_limit_seconds the decay follows whichever runs out first, steps or
    time (elapsed seconds of this run), so a time-capped run still ends at a small rate.
    """
    warm = step / params.num_warmup_steps if params.num_warmup_steps else 1.0
    progress = (step - params.num_warmup_steps) / max(params.num_train_steps - params.num_warmup_steps, 1)
    if params.training_time_limit_seconds and elapsed is not None:
        progress = max(progress, elapsed / params.training_time_limit_seconds)
    return params.learning_rate * min(max(min(warm, 1.0 - progress), 0.0), 1.0)


@dataclass
class LoopState:
    """Where training stands; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metric: float = -1.0
    best_step: int = -1
    evals_without_improvement: int = 0
    stopped_early: bool = False
    history: list = field(default_factory=list)

    def to_arrays(self) -> dict[str, np.ndarray]:
        scalars = [self.step, self.epoch, self.batch_in_epoch, self.best_step, self.evals_without_improvement,
                   int(self.stopped_early)]
        return {"state/ints": np.asarray(scalars, dtype=np.int64), "state/best": np.asarray(self.best_metric)}

    @classmethod
    def from_arrays(cls, arrays: dict) -> "LoopState":
        ints = arrays["state/ints"].tolist()
        return cls(step=ints[0], epoch=ints[1], batch_in_epoch=ints[2], best_metric=float(arrays["state/best"]),
                   best_step=ints[3], evals_without_improvement=ints[4], stopped_early=bool(ints[5]))


class Trainer:
    """Model + optimizer + compiled train step inside a tf.distribute strategy."""

    def __init__(self, params: TrainValParams, manifest: dict, records: Path, item_counts: np.ndarray):
        self.params = params
        self.manifest = manifest
        self.records = records
        self.strategy = make_strategy(params.distribution)
        self.replicas = self.strategy.num_replicas_in_sync
        num_tokens = manifest["num_tokens"]
        with self.strategy.scope():
            self.model = build_model(num_tokens, params.model)
            optimizer = keras.optimizers.AdamW(
                learning_rate=learning_rate(params, 0),
                weight_decay=params.weight_decay, global_clipnorm=params.clip_norm, beta_2=0.98, epsilon=1e-6,
            )
            optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "position_embedding"])
            if params.mixed_precision == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            self.optimizer = optimizer
            self.optimizer.build(self.model.trainable_variables)
        self.log_q = tf.constant(sampling_log_q(item_counts, num_tokens, params.negative_sampling))
        self.state = LoopState()
        self._step_fn = self._make_step()

    def _make_step(self):
        params, model, optimizer, strategy = self.params, self.model, self.optimizer, self.strategy
        log_q, replicas = self.log_q, self.replicas

        def replica_step(inputs, positions, labels, step):
            negatives = None
            if params.loss == "sampled_softmax":
                replica = tf.distribute.get_replica_context().replica_id_in_sync_group
                seed = tf.stack([tf.cast(params.seed, tf.int64), tf.cast(step, tf.int64) * 1024 + tf.cast(replica, tf.int64)])
                negatives = tf.random.stateless_categorical(log_q[None, :], params.num_negatives, seed, dtype=tf.int32)[0]
            with tf.GradientTape() as tape:
                loss = masked_item_loss(model, inputs, positions, labels, params.loss, negatives, log_q)
                scaled = loss / replicas
                if params.mixed_precision == "mixed_float16":
                    scaled = optimizer.scale_loss(scaled)
            grads = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        @tf.function(reduce_retracing=True)
        def train_step(batch, step):
            losses = strategy.run(replica_step, args=(*batch, step))
            return strategy.reduce(tf.distribute.ReduceOp.MEAN, losses, axis=None)

        return train_step

    def epoch_batches(self, epoch: int, skip: int = 0):
        """This epoch's distributed batches, each worker reading its own shards."""
        params = self.params

        def make(context: tf.distribute.InputContext):
            per_replica = context.get_per_replica_batch_size(params.batch_size * self.replicas)
            return dataset.training_batches(
                self.records, self.manifest, per_replica, epoch, params.seed, params.length_buckets,
                worker=context.input_pipeline_id, workers=context.num_input_pipelines, skip=skip,
            )

        return self.strategy.distribute_datasets_from_function(make)

    def train_step(self, batch, elapsed: float | None = None):
        """One optimizer step at the scheduled rate; returns the (replica-mean) loss tensor."""
        self.optimizer.learning_rate = learning_rate(self.params, self.state.step, elapsed)
        return self._step_fn(batch, tf.constant(self.state.step, tf.int64))

    # -- checkpoints -----------------------------------------------------------------------
    def save(self, folder: Path, keep: int) -> Path:
        arrays = {**modelstore.weights_to_arrays(self.model.get_weights(), "model/"),
                  **modelstore.weights_to_arrays([v.numpy() for v in self.optimizer.variables], "optimizer/"),
                  **self.state.to_arrays()}
        path = folder / f"ckpt-{self.state.step}.npz"
        folder.mkdir(parents=True, exist_ok=True)
        modelstore.save_arrays(path, arrays)
        modelstore.prune_checkpoints(folder, keep)
        return path

    def restore(self, path: Path) -> None:
        arrays = modelstore.load_arrays(path, "checkpoint")
        if "state/ints" not in arrays:
            raise modelstore.UserError(f"{path}: checkpoint is corrupt (no training state)")
        modelstore.set_model_weights(self.model, modelstore.arrays_to_weights(arrays, "model/"), path)
        slots = modelstore.arrays_to_weights(arrays, "optimizer/")
        variables = self.optimizer.variables
        if [s.shape for s in slots] != [tuple(v.shape) for v in variables]:
            raise modelstore.UserError(f"{path}: optimizer state does not fit (train_val.loss or mixed_precision changed?)")
        for variable, value in zip(variables, slots):
            variable.assign(value)
        self.state = LoopState.from_arrays(arrays)


class Throughput:
    """Training sequences per second, excluding evaluation and checkpoint time."""

    def __init__(self):
        self.sequences = 0
        self.seconds = 0.0
        self._start = None

    def start(self):
        self._start = time.perf_counter()

    def stop(self, sequences: int):
        if self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self.sequences += sequences
            self._start = None

    @property
    def per_second(self) -> float:
        return self.sequences / self.seconds if self.seconds else 0.0
