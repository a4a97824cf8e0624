"""Training: the strategy, the optimizer, the compiled step and `Trainer.fit()`, the loop itself.

The loop validates every eval_every_steps, keeps the best weights, stops early after
early_stopping_patience evaluations without a better NDCG@10 or when the time budget runs out,
and checkpoints every save_checkpoints_steps. Checkpoints are plain .npz files (model weights,
optimizer slots, loop state) written atomically, so a corrupt or missing one is reported by
name and never half-written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from bert4rec.data.manifest import Manifest
from bert4rec.errors import ClusterStopped, UserError
from bert4rec.model import inputs, store
from bert4rec.model.averaging import WeightAverage
from bert4rec.model.distribute import Worker, common_step
from bert4rec.model.loss import causal_item_loss, masked_item_loss, sampling_log_q
from bert4rec.model.network import build_model
from bert4rec.model.optimizer import LazyAdamW, clip_by_global_norm
from bert4rec.params import TrainValParams
from bert4rec.progress import progress

log = logging.getLogger("bert4rec.train_val")


def learning_rate(params: TrainValParams, step: int, elapsed: float | None = None) -> float:
    """Linear warm-up to the peak rate, then linear decay to zero at num_train_steps.

    With training_time_limit_seconds the decay follows whichever runs out first, steps or
    time (elapsed seconds of this run), so a time-capped run still ends at a small rate.
    """
    warm = step / params.num_warmup_steps if params.num_warmup_steps else 1.0
    done = (step - params.num_warmup_steps) / max(params.num_train_steps - params.num_warmup_steps, 1)
    if params.training_time_limit_seconds and elapsed is not None:
        done = max(done, elapsed / params.training_time_limit_seconds)
    return params.learning_rate * min(max(min(warm, 1.0 - done), 0.0), 1.0)


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
    elapsed: float = 0.0  # wall seconds of training so far, across resumes (the time budget's clock)
    sequences: int = 0  # Throughput's count and seconds so far, across resumes
    sequence_seconds: float = 0.0

    def to_arrays(self) -> dict[str, np.ndarray]:
        scalars = [self.step, self.epoch, self.batch_in_epoch, self.best_step, self.evals_without_improvement,
                   int(self.stopped_early)]
        return {"state/ints": np.asarray(scalars, dtype=np.int64), "state/best": np.asarray(self.best_metric),
                "state/elapsed": np.asarray(self.elapsed),
                "state/throughput": np.asarray([self.sequences, self.sequence_seconds], dtype=np.float64)}

    @classmethod
    def from_arrays(cls, arrays: dict) -> "LoopState":
        ints = arrays["state/ints"].tolist()
        sequences, seconds = arrays.get("state/throughput", np.zeros(2)).tolist()  # absent in older checkpoints
        return cls(step=ints[0], epoch=ints[1], batch_in_epoch=ints[2], best_metric=float(arrays["state/best"]),
                   best_step=ints[3], evals_without_improvement=ints[4], stopped_early=bool(ints[5]),
                   elapsed=float(arrays.get("state/elapsed", 0.0)), sequences=int(sequences),
                   sequence_seconds=float(seconds))


class Throughput:
    """Training sequences per second, excluding evaluation and checkpoint time."""

    def __init__(self):
        self.sequences = 0
        self.seconds = 0.0
        self._start = None

    def start(self):
        self._start = time.perf_counter()

    def stop(self, sequences: int):
        if self._start is not None and sequences:  # a stretch without a step (a checkpoint saved) is no training
            self.seconds += time.perf_counter() - self._start
            self.sequences += sequences
        self._start = None

    @property
    def per_second(self) -> float:
        return self.sequences / self.seconds if self.seconds else 0.0


MetricsHook = Callable[[int, dict], None]
HISTORY = "history/json"  # the curves so far, in each checkpoint: a resumed run's curves start at step 1


class Trainer:
    """Model + optimizer + compiled train step inside a tf.distribute strategy, and the loop."""

    def __init__(self, params: TrainValParams, manifest: Manifest, item_counts: np.ndarray, log_dir: Path,
                 checkpoint_dir: Path, on_metrics: MetricsHook = lambda step, metrics: None,
                 strategy: tf.distribute.Strategy | None = None, worker: Worker = Worker()):
        self.params, self.manifest, self.on_metrics = params, manifest, on_metrics
        self.checkpoint_dir, self.worker = checkpoint_dir, worker
        self.strategy = strategy or tf.distribute.get_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        self.steps_per_epoch = self._common_epoch()
        with self.strategy.scope():
            self.model = build_model(manifest.num_tokens, params.model, causal=params.objective == "causal")
            self.optimizer = self._make_optimizer()
            self.average = (WeightAverage(self.model.trainable_variables, params.weight_average_decay)
                            if params.weight_average_decay else None)
        self.log_q = tf.constant(sampling_log_q(item_counts, manifest.num_tokens, params.negative_sampling))
        self.state = LoopState()
        self._clock = time.monotonic()
        self.rate = learning_rate(params, 0)
        self.best_weights = None
        self.history: dict[int, dict] = {}  # every reported metric by step, kept in the checkpoints
        self.phase: int | None = None  # the fine-tuning phase being trained (tags what is reported)
        self.throughput = Throughput()
        self.train_variables = None  # None: every trainable variable (see train_only)
        self.rate_schedule = lambda step, elapsed: learning_rate(self.params, step, elapsed)
        self._step_fn = self._make_step()
        self._writer = tf.summary.create_file_writer(str(log_dir))

    def _common_epoch(self) -> int | None:
        """Workers read different shards, so their epochs differ in length; every worker must take
        the same number of steps between collectives: an epoch is cut to the shortest one."""
        if self.worker.count == 1:
            return None
        params = self.params
        if self.worker.count > self.manifest.num_shards:
            raise UserError(f"tfrecord.num_shards ({self.manifest.num_shards}) must be at least the number of "
                            f"workers ({self.worker.count}): every worker reads its own shards")
        per_replica = params.batch_size
        counts = [inputs.batches_per_epoch(self.manifest, per_replica, params.length_buckets, w, self.worker.count)
                  for w in range(self.worker.count)]
        log.info("worker %d of %d: %d steps per epoch (batches per worker: %s)", self.worker.index,
                 self.worker.count, min(counts), counts)
        return min(counts)

    def _make_optimizer(self):
        """AdamW; with sampled softmax the item table and output bias update only touched rows.

        Gradients are clipped in the step (sparse ones stay sparse); under mixed_float16 the
        loss-scale optimizer unscales first, so Keras clips (and densifies) there instead.
        """
        params = self.params
        fp16 = params.mixed_precision == "mixed_float16"
        lazy = [self.model.item_embedding.embeddings] if params.loss == "sampled_softmax" and not fp16 else []
        optimizer = LazyAdamW(
            decayed_rows=lazy, learning_rate=learning_rate(params, 0), weight_decay=params.weight_decay,
            global_clipnorm=params.clip_norm if fp16 else None, beta_2=0.98, epsilon=1e-6,
        )
        optimizer.exclude_from_weight_decay(var_list=lazy, var_names=["bias", "gamma", "beta", "position_embedding"])
        if fp16:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(self.model.trainable_variables)
        return optimizer

    def _make_step(self):
        params, model, optimizer, strategy = self.params, self.model, self.optimizer, self.strategy
        log_q, replicas, average = self.log_q, self.replicas, self.average
        # XLA fuses the encoder's many small element-wise ops; one compilation per batch width
        encode = tf.function(model.encode, jit_compile=True) if params.jit_compile else None
        variables = model.trainable_variables if self.train_variables is None else self.train_variables

        def replica_step(batch, step):
            negatives = None
            if params.loss == "sampled_softmax":
                replica = tf.distribute.get_replica_context().replica_id_in_sync_group
                seed = tf.stack([tf.cast(params.seed, tf.int64), tf.cast(step, tf.int64) * 1024 + tf.cast(replica, tf.int64)])
                negatives = tf.random.stateless_categorical(log_q[None, :], params.num_negatives, seed, dtype=tf.int32)[0]
            with tf.GradientTape() as tape:
                objective = causal_item_loss if params.objective == "causal" else masked_item_loss
                loss = objective(model, *batch, params.loss, negatives, log_q, encode=encode)
                scaled = loss / replicas
                if params.mixed_precision == "mixed_float16":
                    scaled = optimizer.scale_loss(scaled)
            grads = tape.gradient(scaled, variables)
            if params.mixed_precision != "mixed_float16":
                grads = clip_by_global_norm(grads, params.clip_norm)
            optimizer.apply_gradients(zip(grads, variables))
            return loss

        @tf.function(reduce_retracing=True)
        def train_step(batch, step):
            losses = strategy.run(replica_step, args=(batch, step))
            if average is not None:
                average.update(step)
            return strategy.reduce(tf.distribute.ReduceOp.MEAN, losses, axis=None)

        return train_step

    def epoch_batches(self, epoch: int, skip: int = 0):
        """This epoch's distributed batches, each worker reading its own shards."""
        params = self.params

        def make(context: tf.distribute.InputContext):
            per_replica = context.get_per_replica_batch_size(params.batch_size * self.replicas)
            return inputs.training_batches(
                self.manifest, per_replica, epoch, params.seed, params.length_buckets,
                worker=context.input_pipeline_id, workers=context.num_input_pipelines, skip=skip,
                limit=self.steps_per_epoch, objective=params.objective,
            )

        return self.strategy.distribute_datasets_from_function(make)

    def train_step(self, batch, elapsed: float | None = None):
        """One optimizer step at the scheduled rate; returns the (replica-mean) loss tensor."""
        self.rate = self.rate_schedule(self.state.step, elapsed)
        self.optimizer.learning_rate = self.rate
        return self._step_fn(batch, tf.constant(self.state.step, tf.int64))

    # -- fine-tuning hooks (model/schedule.py sets them per phase) -------------------------
    def train_only(self, variables: list | None) -> None:
        """Train these variables only from now on (None: all); the step function is traced anew."""
        self.train_variables = variables
        self._step_fn = self._make_step()

    # -- the loop: `validate(model)` gives validation metrics, `validate.label` says on whom ----
    def fit(self, validate) -> LoopState:
        """Train to num_train_steps (or the time budget, or early stopping); best weights restored."""
        try:
            return self._loop(validate)
        except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as error:
            if self.worker.count == 1:
                raise
            text = re.sub(r"\{\{[^}]*\}\}|\[Op:[^\]]*\]", "", str(error))  # TensorFlow's op and node names
            lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
            telling = [line for line in lines if any(w in line for w in ("unhealthy", "crashed", "connect", "closed"))]
            reason = (telling or lines or [type(error).__name__])[0][:200]
            raise ClusterStopped(f"worker {self.worker.index} of {self.worker.count}: another worker stopped ({reason}); "
                            f"training stopped at step {self.state.step}. Start every worker again with the same "
                            "command: they resume from the newest checkpoint all of them hold") from None

    def _loop(self, validate) -> LoopState:
        params, state = self.params, self.state
        started = self._clock = time.monotonic() - state.elapsed  # a resumed run keeps its budget
        validated_at = state.step
        bar = progress(total=params.num_train_steps, initial=state.step, desc="train_val", unit=" steps")
        while not self._finished(started):
            self.throughput.start()
            trained_from = state.step
            for batch in self.epoch_batches(state.epoch, skip=state.batch_in_epoch):
                loss = self.train_step(batch, time.monotonic() - started)
                state.step += 1
                state.batch_in_epoch += 1
                bar.update()
                if state.step % params.log_every_steps == 0:
                    self._log_training(loss, started, bar)
                last = self._finished(started)
                if state.step % params.eval_every_steps == 0 or last:
                    self._count(trained_from)
                    self._validate(validate)
                    validated_at = trained_from = state.step
                    self.throughput.start()
                if state.step % params.save_checkpoints_steps == 0 or last or state.stopped_early:
                    self.save()
                if last or state.stopped_early:
                    break
            else:
                self._next_epoch()
            self._count(trained_from)
        bar.close()
        if self._out_of_time(started) and state.step < params.num_train_steps and not state.stopped_early:
            log.info("training_time_limit_seconds (%s) reached at step %d", params.training_time_limit_seconds, state.step)
        if validated_at != state.step:
            self._validate(validate)
            self.save()
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)
        return state

    def elapsed(self) -> float:
        return time.monotonic() - self._clock

    def _out_of_time(self, started: float) -> bool:
        limit = self.params.training_time_limit_seconds
        return bool(limit) and time.monotonic() - started > limit

    def _finished(self, started: float) -> bool:
        return self.state.step >= self.params.num_train_steps or self.state.stopped_early or self._out_of_time(started)

    def _next_epoch(self) -> None:
        if self.state.batch_in_epoch == 0:
            raise UserError(f"{self.manifest.path}: the train split has fewer examples than "
                            f"train_val.batch_size ({self.params.batch_size}); lower the batch size")
        self.state.epoch, self.state.batch_in_epoch = self.state.epoch + 1, 0

    def _count(self, trained_from: int) -> None:
        self.throughput.stop((self.state.step - trained_from) * self.params.batch_size * self.replicas)

    def _log_training(self, loss, started: float, bar) -> None:
        state = self.state
        loss, rate = float(loss), self.rate
        if not math.isfinite(loss):
            raise UserError(f"training diverged: the loss is {loss} at step {state.step}; lower "
                            f"train_val.learning_rate ({self.params.learning_rate:g}) and train again")
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{rate:.1e}", best=f"{state.best_metric:.4f}")
        log.info("step %d: loss %.4f, learning rate %.2e, epoch %d, %.0f s", state.step, loss, rate, state.epoch,
                 time.monotonic() - started)
        self._report({"train_loss": loss, "learning_rate": rate}, "train")

    def _averaged(self):
        """A block in which the model holds the averaged weights (or its own, without averaging)."""
        return self.average.applied() if self.average is not None else contextlib.nullcontext()

    def _validate(self, validate) -> dict:
        state, patience = self.state, self.params.early_stopping_patience
        raw = {f"raw_{k}": v for k, v in validate(self.model).items()} if self.average is not None else {}
        with self._averaged():
            metrics = validate(self.model)
            if metrics["ndcg_at_10"] > state.best_metric:
                state.best_metric, state.best_step, state.evals_without_improvement = metrics["ndcg_at_10"], state.step, 0
                self.best_weights = self.model.get_weights()
                store.save_arrays(self.checkpoint_dir / "best.npz", store.weights_to_arrays(self.best_weights, "model/"))
            else:
                state.evals_without_improvement += 1
        state.stopped_early = bool(patience) and state.evals_without_improvement >= patience
        log.info("step %d: valid ndcg_at_10 %.4f hit_at_10 %.4f on %s (best %.4f at step %d)%s", state.step,
                 metrics["ndcg_at_10"], metrics["hit_at_10"], validate.label, state.best_metric, state.best_step,
                 f"; weights not averaged: ndcg_at_10 {raw['raw_ndcg_at_10']:.4f}" if raw else "")
        self._report({**{f"valid_{k}": v for k, v in {**metrics, **raw}.items()}, "train_seconds": round(self.elapsed(), 1),
                      "sequences_seen": state.step * self.params.batch_size * self.replicas}, "valid")
        return metrics

    def _report(self, metrics: dict, group: str) -> None:
        tagged = {**metrics, "phase": self.phase} if self.phase else metrics
        self.history.setdefault(self.state.step, {}).update(
            {k: v if isinstance(v, int) else float(v) for k, v in tagged.items()})
        self.on_metrics(self.state.step, tagged)
        with self._writer.as_default(step=self.state.step):
            for key, value in metrics.items():
                tf.summary.scalar(f"{group}/{key.removeprefix(group + '_')}", value)

    # -- checkpoints -----------------------------------------------------------------------
    def _random_states(self) -> list:
        """The dropout layers' random generator states: a resumed run draws the same masks."""
        return [v for v in self.model.variables if "seed_generator_state" in v.path]

    def save(self) -> Path:
        self.state.elapsed = self.elapsed()
        self.state.sequences, self.state.sequence_seconds = self.throughput.sequences, self.throughput.seconds
        arrays = {**store.weights_to_arrays(self.model.get_weights(), "model/"),
                  **store.weights_to_arrays([v.numpy() for v in self.optimizer.variables], "optimizer/"),
                  **store.weights_to_arrays([v.numpy() for v in self._random_states()], "random/"),
                  **store.weights_to_arrays(self.average.values() if self.average else [], "average/"),
                  **self.state.to_arrays(), HISTORY: np.frombuffer(json.dumps(self.history).encode(), np.uint8)}
        path = self.checkpoint_dir / f"ckpt-{self.state.step}.npz"
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        store.save_arrays(path, arrays)
        store.prune_checkpoints(self.checkpoint_dir, self.params.keep_checkpoints)
        return path

    def resume(self, *folders: Path | None) -> bool:
        """Continue from the newest checkpoint of the first of `folders` holding one (with several
        workers: the newest step all of them hold; None stands for a folder with none, so every
        worker makes the same agreements); its best weights come along."""
        for folder in folders:
            saved = dict(store.checkpoints(folder)) if folder is not None else {}
            step = common_step(self.strategy, self.worker, list(saved))
            if step is None:
                continue
            self.restore(saved[step])
            best = folder / "best.npz"
            if best.exists():
                self.best_weights = store.arrays_to_weights(store.load_arrays(best, "best weights"), "model/")
            return True
        return False

    def restore(self, path: Path) -> None:
        arrays = store.load_arrays(path, "checkpoint")
        if "state/ints" not in arrays:
            raise UserError(f"{path}: checkpoint is corrupt (no training state)")
        store.set_model_weights(self.model, store.arrays_to_weights(arrays, "model/"), path)
        slots = store.arrays_to_weights(arrays, "optimizer/")
        variables = self.optimizer.variables
        if [s.shape for s in slots] != [tuple(v.shape) for v in variables]:
            raise UserError(f"{path}: optimizer state does not fit (train_val.loss or mixed_precision changed?)")
        for variable, value in zip(variables, slots):
            variable.assign(value)
        states = store.arrays_to_weights(arrays, "random/")
        for variable, value in zip(self._random_states(), states):  # absent in older checkpoints
            variable.assign(value)
        if self.average is not None:  # a checkpoint saved without averaging starts it from its weights
            averages = store.arrays_to_weights(arrays, "average/")
            if averages:
                self.average.load(averages)
            else:
                self.average.reset()
        self.state = LoopState.from_arrays(arrays)
        self.throughput.sequences, self.throughput.seconds = self.state.sequences, self.state.sequence_seconds
        saved = json.loads(arrays[HISTORY].tobytes()) if HISTORY in arrays else {}  # absent in older checkpoints
        self.history = {int(step): row for step, row in saved.items() if int(step) <= self.state.step}
