"""Gradual unfreezing: fine-tuning in phases, each training only the parts of the model it names.

Parts: `embeddings` (the item table, which is also the tied output layer, the position
embeddings and their norm), `output` (the output bias), `block_N` (transformer block N, 0 =
the lowest), `head` (the masked-item head, and the encoder's final norm under pre-LN), `all`.
Every other variable stays frozen: no gradient, no weight decay, bit-for-bit unchanged.

A phase runs Trainer.fit() to at most `steps` more steps at its own peak learning rate (warm-up,
then linear decay within the phase), stops early after `early_stopping_patience` evaluations
without a better validation NDCG@10 (0: never), and ends with the best weights so far restored,
so the next phase starts from them. With training_time_limit_seconds the remaining budget (on
the trainer's clock, which counts across resumes) is shared among the remaining phases in
proportion to their steps. Without an explicit train_val.finetune_schedule, a model
warm-started from init_from follows the default: head and output, then one more block at a
time from the top, then all (see default_schedule).
Finished phases are recorded in phases.json beside the checkpoints (and kept with a finished
model's last checkpoint), so an interrupted run resumes inside the phase it was in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from bert4rec.errors import UserError
from bert4rec.fileio import write_json
from bert4rec.model.store import PhaseRecord
from bert4rec.model.trainer import LoopState, Trainer, learning_rate
from bert4rec.model.warmstart import variable_name
from bert4rec.params import Phase, TrainValParams

PROGRESS = "phases.json"
FIXED_PARTS = {"item_embedding": "embeddings", "position_embedding": "embeddings", "embedding_norm": "embeddings",
               "output_bias": "output", "head_dense": "head", "head_norm": "head", "final_norm": "head"}


def part_of(name: str) -> str:
    """The schedule part a variable belongs to (from its name: block_1/inner/kernel -> block_1)."""
    first = name.split("/", 1)[0]
    return first if first.startswith("block_") else FIXED_PARTS[first]


def variables_of(model, parts: list[str]) -> list:
    """The model's variables that the named parts train."""
    if "all" in parts:
        return list(model.trainable_variables)
    return [v for v in model.trainable_variables if part_of(variable_name(v)) in parts]


def default_schedule(params: TrainValParams) -> list[Phase]:
    """head + output, then one more block at a time from the top, then all. The partly frozen
    phases share half of num_train_steps evenly; `all` gets the rest (it is the only phase that
    trains the embeddings, so the only one in which new items learn their rows)."""
    layers = params.model.num_hidden_layers
    groups = [["head", "output"]]
    groups += [groups[0] + [f"block_{j}" for j in range(layers - 1, i - 1, -1)] for i in range(layers - 1, -1, -1)]
    groups.append(["all"])
    each = params.num_train_steps // (2 * (len(groups) - 1))
    if each < 1:
        raise UserError(f"train_val.num_train_steps ({params.num_train_steps}) is too small for the "
                        f"{len(groups)} phases of the default fine-tuning schedule (at least {2 * (len(groups) - 1)}); "
                        "raise it or set train_val.finetune_schedule")
    steps = [each] * (len(groups) - 1) + [params.num_train_steps - each * (len(groups) - 1)]
    return [Phase(train=group, steps=count, early_stopping_patience=params.early_stopping_patience)
            for group, count in zip(groups, steps)]


def phases_for(params: TrainValParams) -> list[Phase] | None:
    """The schedule to follow: explicit, the default for a warm start, or None (plain training)."""
    if params.finetune_schedule:
        return list(params.finetune_schedule)
    return default_schedule(params) if params.init_from else None


def phase_seconds(base: TrainValParams, phases: list[Phase], index: int, began: float) -> float | None:
    """The phase's share of training_time_limit_seconds: the time left (the trainer's clock, which
    counts across resumes, stood at `began` when it started) times its share of the steps left."""
    if not base.training_time_limit_seconds:
        return None
    left = max(base.training_time_limit_seconds - began, 1e-3)
    return left * phases[index].steps / sum(p.steps for p in phases[index:])


def configure(trainer: Trainer, base: TrainValParams, phase: Phase, start: int, began: float,
              seconds: float | None) -> float:
    """Point the trainer at one phase, which starts at step `start` and `began` seconds into
    training: its variables, stopping rule, time share and learning-rate schedule."""
    peak = phase.learning_rate or base.learning_rate
    warmup = phase.warmup_steps if phase.warmup_steps is not None else min(base.num_warmup_steps, phase.steps // 10)
    within = base.model_copy(update=dict(learning_rate=peak, num_warmup_steps=warmup, num_train_steps=phase.steps,
                                         training_time_limit_seconds=seconds))
    trainer.params = base.model_copy(update=dict(  # the trainer counts steps and seconds from the start of training
        num_train_steps=start + phase.steps, early_stopping_patience=phase.early_stopping_patience,
        training_time_limit_seconds=None if seconds is None else began + seconds))
    trainer.rate_schedule = lambda step, elapsed: learning_rate(
        within, step - start, None if elapsed is None else elapsed - began)
    trainer.train_only(variables_of(trainer.model, phase.train))
    return peak


def _finished_phases(trainer: Trainer, phases: list[Phase], resumed_from: Path | None) -> list[PhaseRecord]:
    """The phases a resumed run has finished (its checkpoint folder's phases.json, or the one kept
    with a finished model's final checkpoint)."""
    if trainer.state.step == 0:
        return []
    found = [folder / PROGRESS for folder in (trainer.checkpoint_dir, resumed_from) if folder is not None]
    path = next((candidate for candidate in found if candidate.exists()), found[0])
    if not path.exists() and trainer.state.step <= phases[0].steps:
        return []  # stopped inside the first phase: the file is written when a phase ends
    if not path.exists():
        raise UserError(f"{path}: resuming at step {trainer.state.step} without the fine-tuning progress file; "
                        "delete the checkpoints to start over")
    try:
        done = [PhaseRecord.model_validate(entry) for entry in json.loads(path.read_text())["phases"]]
    except (ValueError, TypeError, KeyError) as error:
        raise UserError(f"{path}: fine-tuning progress is corrupt ({error}); delete the checkpoints to start over") from None
    if [d.train for d in done] != [p.train for p in phases[:len(done)]] or len(done) > len(phases):
        raise UserError(f"{path}: the checkpoints were made with another train_val.finetune_schedule; "
                        "set a new train_val.model_name or delete the checkpoints")
    return done


def run_phases(trainer: Trainer, phases: list[Phase], validate, on_phase: Callable[[PhaseRecord], None] = lambda r: None,
               resumed_from: Path | None = None) -> tuple[LoopState, list[PhaseRecord]]:
    """Train phase after phase (resuming after the last finished one); returns the final state
    and one record per phase. `validate(model)` gives validation metrics (see Trainer.fit)."""
    base, report = trainer.params, trainer.on_metrics
    done = _finished_phases(trainer, phases, resumed_from)
    for index in range(len(done), len(phases)):
        phase, start = phases[index], done[-1].end_step if done else 0
        began = sum(record.seconds for record in done)  # the trainer's clock when this phase started
        if trainer.state.step == start:  # a fresh phase (not one resumed from a checkpoint)
            trainer.state.evals_without_improvement, trainer.state.stopped_early = 0, False
        peak = configure(trainer, base, phase, start, began, phase_seconds(base, phases, index, began))
        best = [-1.0]

        def tracked(step: int, metrics: dict) -> None:
            best[0] = max(best[0], metrics.get("valid_ndcg_at_10", -1.0))
            report(step, metrics)

        trainer.on_metrics, trainer.phase = tracked, index + 1
        state = trainer.fit(validate)
        done.append(PhaseRecord(phase=index + 1, train=phase.train, learning_rate=peak, start_step=start,
                                end_step=state.step, stopped_early=state.stopped_early, best_valid_ndcg_at_10=best[0],
                                seconds=state.elapsed - began))
        write_json(trainer.checkpoint_dir / PROGRESS, {"phases": [record.model_dump() for record in done]})
        on_phase(done[-1])
    trainer.params, trainer.on_metrics, trainer.phase = base, report, None
    return trainer.state, done
