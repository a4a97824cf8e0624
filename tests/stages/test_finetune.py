"""Fine-tuning a trained model (train_val.init_from) with a phase schedule, on the tiny project."""

import os

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bert4rec.data.manifest import Manifest
from bert4rec.data.vocabulary import item_counts
from bert4rec.fileio import read_json
from bert4rec.model import schedule, warmstart
from bert4rec.model.trainer import Trainer
from bert4rec.params import Phase, load_params
from bert4rec.paths import ProjectPaths
from bert4rec.stages import finetune
from bert4rec.tools import synthetic
from helpers import make_project, run_stage, set_params

from .tiny import TFRECORD, TINY, USERS, model_dir

SCHEDULE = [{"train": ["head", "output"], "steps": 20}, {"train": ["all"], "steps": 20, "learning_rate": 0.002}]


def child_project(root, init_from, kept_items=150, **train_val):
    """The parent's kind of data, with items above kept_items gone and new ones (+1000) in their place."""
    table = synthetic.generate(users=USERS, items=200, mean_length=25, seed=3, follow_prob=0.9, successors=1, zipf=0.5)
    items = table.column("item")
    table = table.set_column(1, "item", pc.if_else(pc.greater(items, kept_items), pc.add(items, 1000), items))
    data = synthetic.write(table, root / "events.txt", "sequence_lines")
    project = make_project(root / "projects" / "child", data, tfrecord=TFRECORD, inference={"top_k": 400},
                           train_val={**TINY, "model_name": "child", "init_from": init_from,
                                      "eval_every_steps": 10, "num_warmup_steps": 2, **train_val})
    assert run_stage("raw", project) == 0 and run_stage("tfrecord", project) == 0
    return project


def vocabulary_ids(folder):
    return set(pq.read_table(folder / "items.parquet").column("item_id").to_pylist())


def test_fine_tune_from_a_model_folder_with_new_and_gone_items(trained, tmp_path):
    project = child_project(tmp_path, os.path.relpath(model_dir(trained), tmp_path / "projects" / "child"),
                            finetune_schedule=SCHEDULE)
    assert run_stage("train_val", project) == 0
    info = read_json(model_dir(project, "child") / "model.json", "model")
    parent, child = vocabulary_ids(model_dir(trained)), vocabulary_ids(model_dir(project, "child"))
    assert info["parent"]["model_name"] == "tiny" and info["parent"]["new_item_init"] == "random"
    assert (info["parent"]["shared_items"], info["parent"]["new_items"], info["parent"]["dropped_items"]) == \
        (len(parent & child), len(child - parent), len(parent - child))
    assert len(child - parent) > 40 and len(parent - child) > 40
    assert [(p["train"], p["start_step"], p["end_step"]) for p in info["phases"]] == \
        [(["head", "output"], 0, 20), (["all"], 20, 40)]
    assert info["phases"][1]["learning_rate"] == 0.002 and info["trained_steps"] == 40
    curves = pd.read_csv(project / "results" / "child" / "train_val_curves.csv")
    assert curves.groupby("phase")["step"].agg(["min", "max"]).values.tolist() == [[10, 20], [30, 40]]
    assert sum(p["seconds"] for p in info["phases"]) == pytest.approx(curves["train_seconds"].max(), abs=2)
    assert run_stage("inference", project) == 0  # the new items are candidates like any other
    predicted = set(pd.read_parquet(project / "results" / "child" / "predictions.parquet")["item_id"])
    assert predicted & (child - parent)


def test_an_architecture_mismatch_stops_before_anything_is_written(trained, tmp_path, capsys):
    project = child_project(tmp_path, str(model_dir(trained)), model={**TINY["model"], "hidden_size": 16})
    assert run_stage("train_val", project) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "train_val.model.hidden_size is 16 but 32 in the parent" in errors[0], errors
    assert not model_dir(project, "child").exists()


def test_a_parent_sharing_no_item_is_refused(trained, tmp_path, capsys):
    project = child_project(tmp_path, str(model_dir(trained)), kept_items=0)
    assert run_stage("train_val", project) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "the parent model shares no item id with this project's vocabulary" in errors[0], errors
    assert not model_dir(project, "child").exists()


class Improving:
    """A validation stub on which every evaluation is better: a phase's best weights are its last."""

    label = "a stub"

    def __init__(self):
        self.calls = 0

    def __call__(self, model):
        self.calls += 1
        return {"ndcg_at_10": self.calls / 100, "hit_at_10": 0.0}


def test_the_weight_average_starts_from_the_parent_not_the_random_initialisation(trained, tmp_path):
    project = child_project(tmp_path, os.path.relpath(model_dir(trained), tmp_path / "projects" / "child"),
                            weight_average_decay=0.999)
    paths = ProjectPaths(project)
    params = load_params(project / "params.yaml").train_val
    manifest = Manifest.read(project / "data" / "processed" / "records")
    trainer = Trainer(params, manifest, item_counts(project / "references" / "items.parquet"), tmp_path / "logs",
                      tmp_path / "checkpoints")
    initial = trainer.average.values()
    finetune.warm_start(trainer, finetune.load_parent(paths, params, model_dir(project, "child")), params)
    warmed = [v.numpy() for v in trainer.model.trainable_variables]
    assert not all(np.array_equal(a, w) for a, w in zip(initial, warmed))
    assert all(np.array_equal(a, w) for a, w in zip(trainer.average.values(), warmed))


def test_a_schedule_trains_exactly_the_parts_it_names(trained, tmp_path):
    params = load_params(trained / "params.yaml").train_val
    manifest = Manifest.read(trained / "data" / "processed" / "records")
    trainer = Trainer(params, manifest, item_counts(trained / "references" / "items.parquet"), tmp_path / "logs",
                      tmp_path / "checkpoints")
    snapshots = [{warmstart.variable_name(v): v.numpy() for v in trainer.model.weights}]

    def snapshot(record):
        snapshots.append({warmstart.variable_name(v): v.numpy() for v in trainer.model.weights})

    phases = [Phase(train=["head"], steps=6), Phase(train=["block_0", "output"], steps=6), Phase(train=["all"], steps=2)]
    _, records = schedule.run_phases(trainer, phases, Improving(), on_phase=snapshot)
    assert [(r.start_step, r.end_step) for r in records] == [(0, 6), (6, 12), (12, 14)]
    for phase, before, after in zip(phases, snapshots, snapshots[1:]):
        for name, value in after.items():
            trains = "all" in phase.train or schedule.part_of(name) in phase.train
            assert np.array_equal(value, before[name]) != trains, (phase.train, name)


def trained_phases(project) -> list[tuple]:
    """(parts, start step, end step) of each phase the child model's model.json records."""
    info = read_json(model_dir(project, "child") / "model.json", "model")
    return [(p["train"], p["start_step"], p["end_step"]) for p in info["phases"]]


def test_resume_inside_a_schedule(trained, tmp_path, capsys, monkeypatch):
    project = child_project(tmp_path, str(model_dir(trained)), finetune_schedule=SCHEDULE, save_checkpoints_steps=10,
                            keep_checkpoints=5)
    configure = schedule.configure

    def killed_in_phase_two(trainer, base, phase, start, *clock):
        if start > 0:
            raise KeyboardInterrupt  # as if the run were killed when the second phase began
        return configure(trainer, base, phase, start, *clock)

    monkeypatch.setattr(schedule, "configure", killed_in_phase_two)
    assert run_stage("train_val", project) == 130
    monkeypatch.setattr(schedule, "configure", configure)
    assert run_stage("train_val", project) == 0
    assert "resumed child from step 20" in capsys.readouterr().err
    assert trained_phases(project) == [(["head", "output"], 0, 20), (["all"], 20, 40)]
    assert len(read_json(model_dir(project, "child") / "checkpoints" / "phases.json", "progress")["phases"]) == 2
    set_params(project, train_val={"finetune_schedule": SCHEDULE[::-1]})  # another fingerprint: trained anew
    assert run_stage("train_val", project) == 0
    assert "was trained with other records, training params or model code: training anew" in capsys.readouterr().err
    info = read_json(model_dir(project, "child") / "model.json", "model")
    assert [(p["train"], p["start_step"]) for p in info["phases"]] == [(["all"], 0), (["head", "output"], 20)]


def test_resume_inside_the_first_phase(trained, tmp_path, capsys, monkeypatch):
    project = child_project(tmp_path, str(model_dir(trained)), finetune_schedule=SCHEDULE, save_checkpoints_steps=10,
                            keep_checkpoints=5)
    save = Trainer.save

    def killed_after_step_ten(trainer):
        save(trainer)
        if trainer.state.step == 10:
            raise KeyboardInterrupt  # as if killed inside phase 1, before its phases.json is written

    monkeypatch.setattr(Trainer, "save", killed_after_step_ten)
    assert run_stage("train_val", project) == 130
    monkeypatch.setattr(Trainer, "save", save)
    assert run_stage("train_val", project) == 0
    assert "resumed child from step 10" in capsys.readouterr().err
    assert trained_phases(project) == [(["head", "output"], 0, 20), (["all"], 20, 40)]


@pytest.mark.slow
def test_fine_tune_from_a_registered_mlflow_model_records_lineage(trained, tmp_path, monkeypatch):
    import mlflow

    from bert4rec.paths import ProjectPaths
    from bert4rec.workflow import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("BERT4REC_TRACKING", "on")
    paths = ProjectPaths(trained)
    with tracking.stage_run("train_val", paths, load_params(trained / "params.yaml"), sections=("train_val",)):
        parent_run = tracking.current_run_id()
        tracking.log_model(model_dir(trained))
    logged = mlflow.MlflowClient().get_run(parent_run).data.tags["model_uri"]
    version = mlflow.register_model(logged, "tiny-parent").version
    project = child_project(tmp_path, f"models:/tiny-parent/{version}", finetune_schedule=SCHEDULE[1:])
    assert run_stage("train_val", project) == 0
    info = read_json(model_dir(project, "child") / "model.json", "model")
    assert info["parent"]["source"] == f"models:/tiny-parent/{version}" and info["parent"]["run_id"] == parent_run
    run = mlflow.MlflowClient().get_run(info["mlflow_run_id"])
    assert run.data.tags["parent_model"] == f"models:/tiny-parent/{version}"
    assert run.data.tags["parent_run_id"] == run.data.params["parent_run_id"] == parent_run
    assert run.data.params["train_val.init_from"] == f"models:/tiny-parent/{version}"
    assert run.data.tags["phase_1"].startswith("all: steps 0-20")
    assert [m.value for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "phase")][-1] == 1


def test_unknown_mlflow_model_is_one_line(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    project = child_project(tmp_path, "models:/nothing-here/3")
    assert run_stage("train_val", project) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "train_val.init_from 'models:/nothing-here/3': cannot read it from the MLflow" in errors[0]
    assert not model_dir(project, "child").exists()
