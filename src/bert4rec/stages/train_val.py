"""train_val stage: train BERT4Rec on the train split, validate, early-stop, export.

Checkpoints go to projects/<p>/checkpoints/<model>/<fingerprint>/, which DVC does not clear, so
a killed run (under `dvc repro` too) continues where it stopped; a finished run's last checkpoint
moves into models/<model_name>/checkpoints, from which a later run with more num_train_steps
continues (one already there, or stopped early, is only evaluated). Writes weights.npz (best
validation NDCG@10), model.json, config.yaml, items.parquet, valid_metrics.json, tensorboard/ and
saved_model/, and the training curves to results/<model_name>/train_val_curves.csv.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from pathlib import Path

from bert4rec.data import vocabulary
from bert4rec.data.manifest import Manifest
from bert4rec.errors import UserError
from bert4rec.fileio import all_or_nothing, atomic_file, write_curves, write_json
from bert4rec.model import export, recommend, runtime, schedule, store
from bert4rec.model.distribute import Worker, cluster_worker
from bert4rec.model.trainer import Trainer
from bert4rec.params import Params
from bert4rec.paths import ProjectPaths
from bert4rec.stages import finetune
from bert4rec.stages.common import stage_main
from bert4rec.workflow import tracking

log = logging.getLogger("bert4rec.train_val")
FINGERPRINT = "fingerprint"  # beside a finished model's checkpoints: what they may be continued under


def check_inputs(paths: ProjectPaths, params: Params, manifest: Manifest, folder: Path) -> None:
    manifest.require_splits("train", "valid", hint="; set raw.task to train_val_test or train_val and rerun raw "
                                                   "and tfrecord")
    model = params.train_val.model
    if model.max_position_embeddings < manifest.max_seq_length:
        raise UserError(f"train_val.model.max_position_embeddings ({model.max_position_embeddings}) is below "
                        f"tfrecord.max_seq_length ({manifest.max_seq_length})")
    if params.train_val.objective == "causal" and manifest.masking != "dynamic":
        raise UserError(f"{manifest.path}: train_val.objective causal needs tfrecord.masking: dynamic (static "
                        "records hold masked copies; the causal task needs the plain windows); rerun tfrecord "
                        "with masking: dynamic, or set train_val.objective: masked")
    if (folder / store.INFO).exists():
        store.check_compatible(folder, store.read_info(folder), manifest, model, params.train_val.objective,
                               remedy="set train_val.model_name to a new name or restore the params")
        finetune.check_saved(folder, params.train_val)


def checkpoint_dir(paths: ProjectPaths, params: Params, manifest: Manifest, worker: Worker) -> Path:
    """projects/<p>/checkpoints/<model>/<fingerprint>: outside DVC's outputs (DVC clears the model
    folder before a run), keyed so a changed run never resumes a stale one; a worker of several
    keeps its own (they agree on a common step when resuming)."""
    fingerprint = store.training_fingerprint(params.train_val, manifest)
    suffix = "" if worker.chief else f"-worker-{worker.index}"
    return paths.checkpoint_area(params.model_name()) / f"{fingerprint}{suffix}"


def keep_final_state(trainer: Trainer, folder: Path, area: Path) -> None:
    """The finished run's last checkpoint and best weights go with the model (a later run with more
    num_train_steps continues from them); the resumable area is cleaned, with any areas older
    interrupted runs left. Each worker of several removes its own area."""
    if not trainer.worker.chief:
        shutil.rmtree(area, ignore_errors=True)
    elif store.checkpoints(area):  # an evaluation-only run saved nothing new
        final = folder / "checkpoints"
        shutil.rmtree(final, ignore_errors=True)
        final.mkdir(parents=True)
        for path in (store.checkpoints(area)[-1][1], area / "best.npz", area / schedule.PROGRESS):
            if path.exists():
                with atomic_file(final / path.name) as tmp:
                    shutil.copy2(path, tmp)
        with atomic_file(final / FINGERPRINT) as tmp:
            tmp.write_text(area.name)
        for other in area.parent.iterdir():
            if other == area or not other.name.startswith(area.name):
                shutil.rmtree(other, ignore_errors=True)
    with contextlib.suppress(OSError):
        area.parent.rmdir()  # only once no worker's area is left
        area.parent.parent.rmdir()  # the project's checkpoints/, once no model's area is left


def continuable(final: Path, area: Path) -> Path | None:
    """The finished model's checkpoints, if it was trained with the same records, training params
    and model code as this run (a fingerprint beside them); else None: the run trains anew."""
    if not store.checkpoints(final):
        return None
    mark = final / FINGERPRINT
    if mark.exists() and mark.read_text().strip() == area.name.split("-worker-")[0]:
        return final
    log.info("%s was trained with other records, training params or model code: training anew", final.parent)
    return None


def run(paths: ProjectPaths, params: Params) -> store.ModelInfo:
    """Train as this process's worker: the chief writes the model into the project, the others
    into a temporary folder removed when they finish."""
    worker = cluster_worker() if params.train_val.distribution == "multi_worker_mirrored" else Worker()
    if worker.chief:
        return train(paths, params, worker, paths.model_dir(params.model_name()))
    with tempfile.TemporaryDirectory(prefix="bert4rec-worker-") as scratch:
        return train(paths, params, worker, Path(scratch) / params.model_name())


def train(paths: ProjectPaths, params: Params, worker: Worker, folder: Path) -> store.ModelInfo:
    tv, name = params.train_val, params.model_name()
    manifest = Manifest.read(paths.records)
    manifest.require_params(params.tfrecord)
    check_inputs(paths, params, manifest, paths.model_dir(name))
    strategy = runtime.start(tv.distribution, tv.seed, tv.deterministic_ops, tv.mixed_precision)

    def report(step: int, metrics: dict) -> None:
        tracking.log_metrics(metrics, step=step)

    area = checkpoint_dir(paths, params, manifest, worker)
    parent = finetune.load_parent(paths, tv, paths.model_dir(name))
    trainer = Trainer(tv, manifest, vocabulary.item_counts(paths.item_vocab), folder / "tensorboard", area, report,
                      strategy, worker)
    final = continuable(paths.model_dir(name) / "checkpoints", area)
    if trainer.resume(area, final):  # every worker tries both (one agreement each), held or not
        log.info("resumed %s from step %d", name, trainer.state.step)
    elif parent is not None:
        finetune.warm_start(trainer, parent, tv)
    info = store.ModelInfo(model_name=name, num_tokens=manifest.num_tokens, max_seq_length=manifest.max_seq_length,
                           objective=tv.objective, model=tv.model, vocabulary_sha256=manifest.vocabulary.sha256,
                           parent=parent.lineage if parent else None)
    validate = recommend.Validation(manifest, tv.eval_batch_size, tv.validation_users, tv.seed)

    with tracking.stage_run("train_val", paths, params, sections=("train_val",), model_name=name, record=worker.chief):
        tracking.set_tags({"validation": f"valid_* during training: {validate.label}; best_valid_*: all users"})
        finetune.log_lineage(parent)
        state, phases = finetune.fit(trainer, tv, validate, final)
        started = time.perf_counter()
        metrics = validate.full(trainer.model)
        seconds = time.perf_counter() - started
        log.info("validation of all %s users: %.0f s (%.0f users/s)", f"{validate.total:,}", seconds,
                 validate.total / seconds)
        info = info.model_copy(update=dict(
            trained_steps=state.step, replicas=trainer.replicas, best_step=state.best_step,
            stopped_early=state.stopped_early, valid=metrics,
            training_sequences_per_second=round(trainer.throughput.per_second, 2),
            training_seconds=round(trainer.throughput.seconds, 2), mlflow_run_id=tracking.current_run_id(),
            phases=phases))
        with all_or_nothing():  # the trained model's files appear together; the resumable state stays till then
            save_model(trainer.model, folder, params, info, paths)
            if worker.chief:
                write_curves(paths.results_dir(name) / "train_val_curves.csv", trainer.history)
        keep_final_state(trainer, folder, area)
        tracking.log_metrics({f"best_valid_{k}": v for k, v in metrics.items()})
        for artifact in ("valid_metrics.json", "config.yaml", store.INFO):
            tracking.log_artifact(folder / artifact)
        tracking.log_model(folder)
    log.info("model %s: %d steps, valid ndcg_at_10 %.4f hit_at_10 %.4f -> %s", name, state.step,
             metrics["ndcg_at_10"], metrics["hit_at_10"], folder)
    return info


def save_model(model, folder: Path, params: Params, info: store.ModelInfo, paths: ProjectPaths) -> None:
    """The trained model's files, written only now: a run that fails, is refused or is stopped
    leaves an earlier model's files as they were."""
    store.write_model_files(folder, params, info, paths.item_vocab)
    store.save_arrays(folder / store.WEIGHTS, store.weights_to_arrays(model.get_weights(), "model/"))
    export.export(model, store.item_ids(folder).to_numpy(zero_copy_only=False), info.max_seq_length,
                  folder / "saved_model")
    write_json(folder / "valid_metrics.json", {"model_name": info.model_name, "step": info.best_step, **info.valid})


def main(argv: list[str] | None = None) -> int:
    paths, params = stage_main("train_val", __doc__.splitlines()[0], argv)
    run(paths, params)
    return 0
