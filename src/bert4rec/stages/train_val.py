"""train_val stage: train BERT4Rec on the train split, validate, early-stop, export.

Resumes from the newest checkpoint in models/<model_name>/checkpoints; a model already at
num_train_steps (or stopped early) is only evaluated. Writes weights.npz (best validation
NDCG@10), model.json, config.yaml, items.parquet, valid_metrics.json, tensorboard/ and
saved_model/ beside it, and the training curves to results/<model_name>/train_val_curves.csv.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from bert4rec.data import vocabulary
from bert4rec.data.manifest import Manifest
from bert4rec.errors import UserError
from bert4rec.fileio import write_curves, write_json
from bert4rec.model import export, recommend, runtime, store
from bert4rec.model.trainer import Trainer, is_chief
from bert4rec.params import Params
from bert4rec.paths import ProjectPaths
from bert4rec.stages.common import stage_main
from bert4rec.workflow import tracking

log = logging.getLogger("bert4rec.train_val")


def check_inputs(paths: ProjectPaths, params: Params, manifest: Manifest, folder: Path) -> None:
    manifest.require_splits("train", "valid", hint="; set raw.task to train_val_test or train_val and rerun raw "
                                                   "and tfrecord")
    model = params.train_val.model
    if model.max_position_embeddings < manifest.max_seq_length:
        raise UserError(f"train_val.model.max_position_embeddings ({model.max_position_embeddings}) is below "
                        f"tfrecord.max_seq_length ({manifest.max_seq_length})")
    if (folder / store.INFO).exists():
        store.check_compatible(folder, store.read_info(folder), manifest, model)


def run(paths: ProjectPaths, params: Params) -> store.ModelInfo:
    tv, name = params.train_val, params.model_name()
    manifest = Manifest.read(paths.records)
    folder = paths.model_dir(name)
    check_inputs(paths, params, manifest, folder)
    runtime.setup(tv.seed, tv.deterministic_ops, tv.mixed_precision)
    counts = vocabulary.item_counts(paths.item_vocab)
    curves: dict[int, dict] = {}

    def report(step: int, metrics: dict) -> None:
        curves.setdefault(step, {}).update(metrics)
        tracking.log_metrics(metrics, step=step)

    trainer = Trainer(tv, manifest, counts, folder, on_metrics=report)
    if trainer.resume():
        log.info("resumed %s from step %d", name, trainer.state.step)
    if not is_chief(trainer.strategy):  # other workers write to a scratch copy
        folder = trainer.folder = Path(tempfile.mkdtemp(prefix="bert4rec-worker-")) / name
    info = store.ModelInfo(model_name=name, num_tokens=manifest.num_tokens, max_seq_length=manifest.max_seq_length,
                           model=tv.model, vocabulary_sha256=manifest.vocabulary.sha256)
    store.write_model_files(folder, params, info, paths.item_vocab)
    validate = recommend.Validation(manifest, tv.eval_batch_size, tv.validation_users, tv.seed)

    with tracking.stage_run("train_val", paths, params, sections=("train_val",), model_name=name):
        tracking.set_tags({"validation": f"valid_* during training: {validate.label}; best_valid_*: all users"})
        state = trainer.fit(validate)
        metrics = validate.full(trainer.model)
        store.save_arrays(folder / store.WEIGHTS, store.weights_to_arrays(trainer.model.get_weights(), "model/"))
        export.export(trainer.model, store.item_ids(folder).to_numpy(zero_copy_only=False), manifest.max_seq_length, folder / "saved_model")
        info = info.model_copy(update=dict(
            trained_steps=state.step, replicas=trainer.replicas, best_step=state.best_step,
            stopped_early=state.stopped_early, valid=metrics,
            training_sequences_per_second=round(trainer.throughput.per_second, 2),
            training_seconds=round(trainer.throughput.seconds, 2)))
        store.write_model_files(folder, params, info, paths.item_vocab)
        write_json(folder / "valid_metrics.json", {"model_name": name, "step": state.best_step, **metrics})
        write_curves(paths.results_dir(name) / "train_val_curves.csv", curves)
        tracking.log_metrics({f"best_valid_{k}": v for k, v in metrics.items()})
        for artifact in ("valid_metrics.json", "config.yaml", store.INFO):
            tracking.log_artifact(folder / artifact)
        tracking.log_model(folder)
    log.info("model %s: %d steps, valid ndcg_at_10 %.4f hit_at_10 %.4f -> %s", name, state.step,
             metrics["ndcg_at_10"], metrics["hit_at_10"], folder)
    return info


def main(argv: list[str] | None = None) -> int:
    paths, params = stage_main("train_val", __doc__.splitlines()[0], argv)
    run(paths, params)
    return 0
