"""train_val stage: train BERT4Rec on the train split, validate, early-stop, export.

Resumes from the newest checkpoint in models/<model_name>/checkpoints; a model already at
num_train_steps (or stopped early) is only evaluated. Writes weights.npz (best validation
NDCG@10), model.json, config.yaml, items.parquet, valid_metrics.json, tensorboard/ and
saved_model/ beside it.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import tensorflow as tf

from bert4rec import dataset, export, modelstore, scoring, tracking, training, vocabulary
from bert4rec.config import Params
from bert4rec.errors import UserError
from bert4rec.fileio import write_json
from bert4rec.paths import ProjectPaths
from bert4rec.progress import progress
from bert4rec.project import stage_main

log = logging.getLogger("bert4rec.train_val")


def run(paths: ProjectPaths, params: Params) -> dict:
    tv = params.train_val
    manifest = dataset.load_manifest(paths.records)
    if "train" not in manifest["splits"] or "valid" not in manifest["splits"]:
        raise UserError(f"{paths.records / 'manifest.json'}: task {manifest['task']} has no train/valid splits; "
                        "set raw.task to train_val_test or train_val and rerun raw and tfrecord")
    name = modelstore.model_name(params)
    folder = paths.model_dir(name)
    if tv.model.max_position_embeddings < manifest["max_seq_length"]:
        raise UserError(f"train_val.model.max_position_embeddings ({tv.model.max_position_embeddings}) is below "
                        f"tfrecord.max_seq_length ({manifest['max_seq_length']})")
    if (folder / "model.json").exists():
        modelstore.check_compatible(folder, modelstore.read_model_info(folder), manifest, tv.model)
    info = {"model_name": name, "num_tokens": manifest["num_tokens"], "max_seq_length": manifest["max_seq_length"],
            "model": tv.model.model_dump(mode="json"), "vocabulary_sha256": manifest["vocabulary"]["sha256"]}

    training.setup_runtime(tv)
    counts = vocabulary.item_counts(paths.item_vocab)
    trainer = training.Trainer(tv, manifest, paths.records, counts)
    state = trainer.state
    saved = modelstore.checkpoints(folder / "checkpoints")
    if saved:
        trainer.restore(saved[-1][1])
        state = trainer.state
        log.info("resumed %s from step %d (%s)", name, state.step, saved[-1][1].name)
    best = folder / "checkpoints" / "best.npz"
    if not training.is_chief(trainer.strategy):  # other workers write to a scratch copy
        folder = Path(tempfile.mkdtemp(prefix="bert4rec-worker-")) / name
    modelstore.write_model_files(folder, params, info, paths.item_vocab)
    best_weights = modelstore.arrays_to_weights(modelstore.load_arrays(best, "best weights"), "model/") if best.exists() else None
    popularity = scoring.popularity_scores(counts, manifest["num_tokens"])
    score = scoring.score_function(trainer.model)
    writer = tf.summary.create_file_writer(str(folder / "tensorboard"))

    def validate() -> dict:
        nonlocal best_weights
        metrics, _, _ = scoring.evaluate(trainer.model, paths.records, manifest, "valid", tv.eval_batch_size,
                                         popularity, score=score)
        improved = metrics["ndcg_at_10"] > state.best_metric
        if improved:
            state.best_metric, state.best_step, state.evals_without_improvement = metrics["ndcg_at_10"], state.step, 0
            best_weights = trainer.model.get_weights()
            modelstore.save_arrays(folder / "checkpoints" / "best.npz", modelstore.weights_to_arrays(best_weights, "model/"))
        else:
            state.evals_without_improvement += 1
        patience = tv.early_stopping_patience
        state.stopped_early = bool(patience) and state.evals_without_improvement >= patience
        log.info("step %d: valid ndcg_at_10 %.4f hit_at_10 %.4f (best %.4f at step %d)", state.step,
                 metrics["ndcg_at_10"], metrics["hit_at_10"], state.best_metric, state.best_step)
        tracking.log_metrics({f"valid_{k}": v for k, v in metrics.items()}, step=state.step)
        with writer.as_default(step=state.step):
            for key, value in metrics.items():
                tf.summary.scalar(f"valid/{key}", value)
        return metrics

    with tracking.stage_run("train_val", paths, {"train_val": tv.model_dump(mode="json"), "model_name": name},
                            tags={"model_name": name}):
        started = time.monotonic()
        throughput = training.Throughput()
        trained_to = validated_at = state.step
        out_of_time = False
        bar = progress(total=tv.num_train_steps, initial=state.step, desc="train_val", unit=" steps")
        while state.step < tv.num_train_steps and not state.stopped_early and not out_of_time:
            throughput.start()
            for batch in trainer.epoch_batches(state.epoch, skip=state.batch_in_epoch):
                loss = trainer.train_step(batch, time.monotonic() - started)
                state.step += 1
                state.batch_in_epoch += 1
                bar.update()
                if state.step % tv.log_every_steps == 0:
                    loss, rate = float(loss), float(trainer.optimizer.learning_rate)
                    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{rate:.1e}", best=f"{state.best_metric:.4f}")
                    log.info("step %d: loss %.4f, learning rate %.2e, epoch %d, %.0f s", state.step, loss, rate,
                             state.epoch, time.monotonic() - started)
                    tracking.log_metrics({"train_loss": loss, "learning_rate": rate}, step=state.step)
                    with writer.as_default(step=state.step):
                        tf.summary.scalar("train/loss", loss)
                        tf.summary.scalar("train/learning_rate", rate)
                limit = tv.training_time_limit_seconds
                out_of_time = bool(limit) and time.monotonic() - started > limit
                last = state.step >= tv.num_train_steps or out_of_time
                if state.step % tv.eval_every_steps == 0 or last:
                    throughput.stop((state.step - trained_to) * tv.batch_size * trainer.replicas)
                    trained_to = validated_at = state.step
                    validate()
                    throughput.start()
                if state.step % tv.save_checkpoints_steps == 0 or last or state.stopped_early:
                    trainer.save(folder / "checkpoints", tv.keep_checkpoints)
                if last or state.stopped_early:
                    break
            else:
                if state.batch_in_epoch == 0:
                    raise UserError(f"{paths.records / 'manifest.json'}: the train split has fewer examples than "
                                    f"train_val.batch_size ({tv.batch_size}); lower the batch size")
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            throughput.stop((state.step - trained_to) * tv.batch_size * trainer.replicas)
            trained_to = state.step
        bar.close()
        if out_of_time:
            log.info("training_time_limit_seconds (%s) reached at step %d", tv.training_time_limit_seconds, state.step)
        if validated_at != state.step:
            validate()
            trainer.save(folder / "checkpoints", tv.keep_checkpoints)
        if best_weights is not None:
            trainer.model.set_weights(best_weights)
        metrics, _, _ = scoring.evaluate(trainer.model, paths.records, manifest, "valid", tv.eval_batch_size,
                                         popularity, score=score)
        modelstore.save_arrays(folder / "weights.npz", modelstore.weights_to_arrays(trainer.model.get_weights(), "model/"))
        item_ids = vocabulary.load_vocabulary(paths.item_vocab).to_numpy(zero_copy_only=False)
        export.export(trainer.model, item_ids, manifest["max_seq_length"], folder / "saved_model")
        info.update(trained_steps=state.step, replicas=trainer.replicas, best_step=state.best_step, stopped_early=state.stopped_early,
                    valid=metrics, training_sequences_per_second=round(throughput.per_second, 2),
                    training_seconds=round(throughput.seconds, 2))
        modelstore.write_model_files(folder, params, info, paths.item_vocab)
        write_json(folder / "valid_metrics.json", {"model_name": name, "step": state.best_step, **metrics})
        tracking.log_metrics({f"best_valid_{k}": v for k, v in metrics.items()})
        tracking.log_artifact(folder / "valid_metrics.json")
        tracking.log_artifact(folder / "config.yaml")
        tracking.log_artifact(folder / "model.json")
    log.info("model %s: %d steps, valid ndcg_at_10 %.4f hit_at_10 %.4f -> %s", name, state.step,
             metrics["ndcg_at_10"], metrics["hit_at_10"], folder)
    return info


def main(argv: list[str] | None = None) -> int:
    paths, params = stage_main("train_val", __doc__.splitlines()[0], argv)
    run(paths, params)
    return 0
