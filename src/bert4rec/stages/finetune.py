"""Fine-tuning for the train_val stage: the parent model named by train_val.init_from (a
models/<name> folder of this or another project, relative to the project folder, or an MLflow
model URI), the warm start from it, its lineage in model.json and MLflow, and the phase
schedule (gradual unfreezing) around Trainer.fit().
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from bert4rec.data import vocabulary
from bert4rec.errors import UserError
from bert4rec.model import schedule, store, warmstart
from bert4rec.model.trainer import LoopState, Trainer
from bert4rec.params import TrainValParams
from bert4rec.paths import ProjectPaths
from bert4rec.workflow import tracking

log = logging.getLogger("bert4rec.train_val")


@dataclass
class LoadedParent:
    weights: warmstart.Parent
    match: warmstart.Reconciliation  # the parent's items onto this vocabulary
    lineage: store.ParentModel


@contextlib.contextmanager
def _parent_folder(paths: ProjectPaths, params: TrainValParams, own: Path) -> Iterator[tuple[Path, str | None]]:
    if params.init_from_uri():
        with tracking.registered_model(paths, params.init_from) as found:
            yield found
        return
    folder = paths.resolve_input(params.init_from)
    if folder.resolve() == own.resolve():
        raise UserError(f"train_val.init_from '{params.init_from}' is the model being trained ({own}); "
                        "name another model, or set a new train_val.model_name")
    if not folder.is_dir():
        raise UserError(f"{folder}: train_val.init_from: no such model folder (expected models/<name> of a trained "
                        "model; a relative path starts at the project folder, e.g. ../<project>/models/<name>)")
    yield folder, (store.read_info(folder).mlflow_run_id if (folder / store.INFO).exists() else None)


def load_parent(paths: ProjectPaths, params: TrainValParams, own: Path) -> LoadedParent | None:
    """The parent model's weights and lineage (None without init_from); the architecture must match."""
    if not params.init_from:
        return None
    with _parent_folder(paths, params, own) as (folder, run_id):
        parent = warmstart.load_parent(folder, params.init_from)
    warmstart.check_architecture(parent, params.model, params.init_from)
    item_ids = vocabulary.load_vocabulary(paths.item_vocab)
    match = warmstart.reconcile(parent.item_ids, item_ids)
    if len(match.tokens) == 0:
        raise UserError(f"train_val.init_from '{params.init_from}': the parent model shares no item id with this "
                        f"project's vocabulary ({paths.item_vocab}: e.g. {_examples(item_ids)}; the parent's: e.g. "
                        f"{_examples(parent.item_ids)}), so nothing it learnt of items would carry over; check "
                        "that both projects read the same id column, or leave train_val.init_from empty to train anew")
    lineage = store.ParentModel(
        source=params.init_from, model_name=parent.info.model_name, run_id=run_id,
        vocabulary_sha256=parent.info.vocabulary_sha256, shared_items=len(match.tokens),
        new_items=len(match.new_tokens), dropped_items=match.dropped, new_item_init=params.new_item_init)
    return LoadedParent(parent, match, lineage)


def _examples(ids) -> str:
    return ", ".join(repr(value) for value in ids[:3].to_pylist())


def check_saved(folder: Path, params: TrainValParams) -> None:
    """A model folder resumed or re-evaluated must have been started from the same parent."""
    saved = store.read_info(folder).parent
    if (saved.source if saved else None) != params.init_from and store.checkpoints(folder / "checkpoints"):
        raise UserError(f"{folder / store.INFO}: params contradict the saved model '{folder.name}' (train_val.init_from: "
                        f"saved {saved and saved.source!r}, params {params.init_from!r}); set train_val.model_name "
                        "to a new name or restore the params")


def warm_start(trainer: Trainer, parent: LoadedParent, params: TrainValParams) -> None:
    warmstart.warm_start(trainer.model, parent.weights, parent.match, params.new_item_init)
    if trainer.average is not None:  # the average starts from the parent, not the random initialisation
        trainer.average.reset()
    lineage = parent.lineage
    log.info("warm start from %s (model %s): %d items kept, %d new (%s), %d dropped", lineage.source,
             lineage.model_name, lineage.shared_items, lineage.new_items, lineage.new_item_init, lineage.dropped_items)


def log_lineage(parent: LoadedParent | None) -> None:
    """The parent as tags and params of the train_val run (MLflow lineage)."""
    if parent is None:
        return
    lineage = parent.lineage
    values = {"parent_model": lineage.source, "parent_model_name": lineage.model_name,
              "parent_run_id": lineage.run_id or "none"}
    tracking.set_tags(values)
    tracking.log_params(values)
    tracking.log_metrics({"warm_start": {k: getattr(lineage, k) for k in ("shared_items", "new_items", "dropped_items")}})


def _log_phase(record: store.PhaseRecord) -> None:
    log.info("phase %d (%s): steps %d-%d, best valid ndcg_at_10 %.4f%s", record.phase, ", ".join(record.train),
             record.start_step, record.end_step, record.best_valid_ndcg_at_10,
             ", stopped early" if record.stopped_early else "")
    tracking.set_tags({f"phase_{record.phase}": f"{'+'.join(record.train)}: steps {record.start_step}-"
                                               f"{record.end_step}, lr {record.learning_rate:g}"})


def fit(trainer: Trainer, params: TrainValParams, validate, final_state: Path | None) -> tuple[LoopState, list | None]:
    """Trainer.fit(), or the phases of the fine-tuning schedule when there is one (final_state:
    where a finished run's last checkpoint and phases.json went, should training resume from there)."""
    phases = schedule.phases_for(params)
    if phases is None:
        return trainer.fit(validate), None
    return schedule.run_phases(trainer, phases, validate, on_phase=_log_phase, resumed_from=final_state)
