"""train_val on the learnable synthetic project (tiny model, CPU): learning, resume, seeds, scale-out."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from bert4rec.fileio import read_json
from helpers import REPO, run_stage, set_params

from .tiny import TINY, USERS, model_dir, most_popular_valid_ndcg, new_project

run = run_stage


def test_tiny_model_learns_the_sequential_pattern(trained):
    valid = read_json(model_dir(trained) / "valid_metrics.json", "valid metrics")
    baseline = most_popular_valid_ndcg(trained)
    assert valid["ndcg_at_10"] > 1.3 * baseline, (valid["ndcg_at_10"], baseline)
    info = read_json(model_dir(trained) / "model.json", "model")
    assert info["trained_steps"] == 600 and info["training_sequences_per_second"] > 0
    saved = yaml.safe_load((model_dir(trained) / "config.yaml").read_text())
    assert saved["train_val"]["num_train_steps"] == 600 and saved["tfrecord"]["max_seq_length"] == 20
    assert (model_dir(trained) / "items.parquet").read_bytes() == (trained / "references" / "items.parquet").read_bytes()
    assert sorted(p.name for p in (model_dir(trained) / "checkpoints").iterdir()) == ["best.npz", "ckpt-600.npz", "fingerprint"]
    assert not (trained / "checkpoints").exists()  # the resumable area is removed after success
    assert any((model_dir(trained) / "tensorboard").iterdir())


def test_resume_continues_then_only_evaluates(trained, tmp_path, capfd):
    project = tmp_path / "synth"
    shutil.copytree(trained, project, symlinks=True)
    set_params(project, train_val={"num_train_steps": 700})
    assert run("train_val", project) == 0
    assert "resumed tiny from step 600" in capfd.readouterr().err
    info = read_json(model_dir(project) / "model.json", "model")
    assert info["trained_steps"] == 700
    first = read_json(model_dir(trained) / "model.json", "model")  # training time counts across resumes
    assert info["training_seconds"] > first["training_seconds"] > 0
    before = sorted(p.name for p in (model_dir(project) / "checkpoints").iterdir())
    assert run("train_val", project) == 0  # already at num_train_steps: evaluation only
    log = capfd.readouterr().err
    assert "resumed tiny from step 700" in log and "step 700: valid" not in log
    assert sorted(p.name for p in (model_dir(project) / "checkpoints").iterdir()) == before
    again = read_json(model_dir(project) / "model.json", "model")
    assert (again["training_seconds"], again["training_sequences_per_second"]) == \
        (info["training_seconds"], info["training_sequences_per_second"])  # not 0 for a run that trained nothing


def test_same_seed_gives_the_same_metrics(tmp_path):
    results = []
    for name in ("a", "b"):
        project = new_project(tmp_path / name, num_train_steps=20, eval_every_steps=20, deterministic_ops=True)
        assert run("train_val", project) == 0
        results.append(read_json(model_dir(project) / "valid_metrics.json", "metrics"))
    assert results[0] == results[1]


def test_bad_inputs_fail_with_one_clear_message(trained, tmp_path, capsys):
    project = tmp_path / "synth"
    shutil.copytree(trained, project, symlinks=True)
    checkpoints = model_dir(project) / "checkpoints"
    newest = sorted(checkpoints.glob("ckpt-*"))[-1]
    newest.write_bytes(b"not a checkpoint")
    assert run("train_val", project) == 2
    assert f"{newest}: checkpoint is corrupt" in capsys.readouterr().err
    shutil.rmtree(checkpoints)

    set_params(project, train_val={"model": {**TINY["model"], "hidden_size": 16}})
    assert run("train_val", project) == 2
    assert "params contradict the saved model 'tiny'" in capsys.readouterr().err
    set_params(project, train_val={"model": TINY["model"]})

    (project / "references" / "items.parquet").unlink()
    set_params(project, train_val={"model_name": "fresh"})
    assert run("train_val", project) == 2
    assert f"{project / 'references' / 'items.parquet'}: no saved item vocabulary" in capsys.readouterr().err
    assert not model_dir(project, "fresh").exists()


MIRRORED = """
import os, sys, tensorflow as tf
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
from bert4rec import cli
sys.exit(cli.main(["train_val", "--project", sys.argv[1]]))
"""


def test_mirrored_strategy_over_two_logical_cpus(trained, tmp_path):
    project = tmp_path / "synth"
    shutil.copytree(trained, project, symlinks=True)
    shutil.rmtree(project / "models")
    set_params(project, train_val={"distribution": "mirrored", "num_train_steps": 6, "eval_every_steps": 6,
                                   "model_name": "mirrored", "weight_average_decay": 0.9})
    env = {**os.environ, "BERT4REC_TRACKING": "off"}
    done = subprocess.run([sys.executable, "-c", MIRRORED, str(project)], env=env, capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    info = read_json(model_dir(project, "mirrored") / "model.json", "model")
    assert info["trained_steps"] == 6 and info["replicas"] == 2


@pytest.mark.parametrize("sampler", ["uniform", "popularity"])
def test_sampled_softmax_learns_the_pattern(tmp_path, sampler):
    project = new_project(tmp_path, model_name="sampled", loss="sampled_softmax", num_negatives=50,
                          negative_sampling=sampler, num_train_steps=600, eval_every_steps=600)
    assert run("train_val", project) == 0
    valid = read_json(model_dir(project, "sampled") / "valid_metrics.json", "valid metrics")
    assert valid["ndcg_at_10"] > 1.2 * most_popular_valid_ndcg(project), valid["ndcg_at_10"]  # ~1.3x here


def test_mixed_bfloat16_trains_exports_and_leaves_float32_behind(tmp_path):
    import keras

    project = new_project(tmp_path, model_name="bf16", mixed_precision="mixed_bfloat16", num_train_steps=400,
                          eval_every_steps=400)
    try:
        assert run("train_val", project) == 0
        assert run("inference", project) == 0
    finally:
        keras.mixed_precision.set_global_policy("float32")
    valid = read_json(model_dir(project, "bf16") / "valid_metrics.json", "valid metrics")
    assert valid["ndcg_at_10"] > 1.3 * most_popular_valid_ndcg(project), valid["ndcg_at_10"]
    weights = np.load(model_dir(project, "bf16") / "weights.npz")
    assert all(weights[key].dtype == np.float32 for key in weights.files)  # variables stay float32
    predictions = pd.read_parquet(project / "results" / "bf16" / "predictions.parquet")
    assert len(predictions) == USERS * 5 and np.isfinite(predictions["score"]).all()


def test_validation_on_a_sample_during_training_and_on_everyone_at_the_end(tmp_path, capfd):
    project = new_project(tmp_path, model_name="sampled-valid", validation_users=50, num_train_steps=20,
                          eval_every_steps=10)
    assert run("train_val", project) == 0
    log = capfd.readouterr().err
    assert f"on a seeded sample of 50 of {USERS} users" in log
    valid = read_json(model_dir(project, "sampled-valid") / "valid_metrics.json", "valid metrics")
    assert valid["users"] == USERS
    curves = pd.read_csv(project / "results" / "sampled-valid" / "train_val_curves.csv")
    assert set(curves["valid_users"].dropna()) == {50}


def test_a_killed_run_resumes_to_the_same_result(tmp_path):
    """deterministic_ops: killed at a random checkpoint and run again == never interrupted (dropout
    and weight averaging on: the averages come back from the checkpoint too)."""
    import random
    import signal
    import time

    settings = dict(num_train_steps=60, eval_every_steps=30, save_checkpoints_steps=5, log_every_steps=5,
                    deterministic_ops=True, weight_average_decay=0.9, model={**TINY["model"], "hidden_dropout_prob": 0.1})
    whole = new_project(tmp_path / "whole", model_name="m", **settings)
    assert run("train_val", whole) == 0
    project = new_project(tmp_path / "killed", model_name="m", **settings)
    kill_after = random.Random(os.getpid()).choice(range(10, 50, 5))
    process = subprocess.Popen([sys.executable, "-m", "bert4rec.cli", "train_val", "--project", str(project)],
                               env={**os.environ, "BERT4REC_TRACKING": "off"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    area = project / "checkpoints" / "m"
    while not list(area.glob(f"*/ckpt-{kill_after}.npz")):
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (model_dir(project, "m") / "weights.npz").exists()
    assert run("train_val", project) == 0
    expected = read_json(model_dir(whole, "m") / "valid_metrics.json", "metrics")
    assert read_json(model_dir(project, "m") / "valid_metrics.json", "metrics") == expected
    first, second = np.load(model_dir(whole, "m") / "weights.npz"), np.load(model_dir(project, "m") / "weights.npz")
    assert all(np.array_equal(first[key], second[key]) for key in first.files)
    # the curves before the kill come back from the checkpoint: the whole run's, but for the clock
    curves = [pd.read_csv(p / "results" / "m" / "train_val_curves.csv").drop(columns="train_seconds") for p in (whole, project)]
    pd.testing.assert_frame_equal(curves[0], curves[1])


def test_causal_objective_learns_the_pattern(tmp_path):
    project = new_project(tmp_path, model_name="causal", objective="causal", num_train_steps=300, eval_every_steps=300)
    assert run("train_val", project) == 0
    valid = read_json(model_dir(project, "causal") / "valid_metrics.json", "valid metrics")
    assert valid["ndcg_at_10"] > 1.3 * most_popular_valid_ndcg(project), valid["ndcg_at_10"]
    assert read_json(model_dir(project, "causal") / "model.json", "model")["objective"] == "causal"
    assert run("inference", project) == 0 and run("test", project) == 0


def test_weight_averaging_validates_and_keeps_the_average(tmp_path):
    """The saved model is the moving average at its best validation, not the last weights; the
    weights' own validation is logged beside the average's."""
    project = new_project(tmp_path, model_name="avg", objective="causal", weight_average_decay=0.99,
                          num_train_steps=300, eval_every_steps=100, early_stopping_patience=0)
    assert run("train_val", project) == 0
    valid = read_json(model_dir(project, "avg") / "valid_metrics.json", "valid metrics")
    assert valid["ndcg_at_10"] > 1.3 * most_popular_valid_ndcg(project), valid["ndcg_at_10"]
    curves = pd.read_csv(project / "results" / "avg" / "train_val_curves.csv").dropna(subset=["valid_ndcg_at_10"])
    assert list(curves["step"]) == [100, 200, 300] and curves["valid_raw_ndcg_at_10"].notna().all()
    assert not np.allclose(curves["valid_raw_ndcg_at_10"], curves["valid_ndcg_at_10"])
    saved = np.load(model_dir(project, "avg") / "weights.npz")
    checkpoint = np.load(model_dir(project, "avg") / "checkpoints" / "ckpt-300.npz")
    assert any(key.startswith("average/") for key in checkpoint.files)
    assert not all(np.array_equal(saved[key], checkpoint[key]) for key in saved.files)


def test_causal_objective_with_sampled_softmax_buckets_and_bfloat16(tmp_path):
    import keras

    project = new_project(tmp_path, model_name="causal-mix", objective="causal", loss="sampled_softmax",
                          num_negatives=50, length_buckets=2, mixed_precision="mixed_bfloat16",
                          num_train_steps=300, eval_every_steps=300)
    try:
        assert run("train_val", project) == 0
    finally:
        keras.mixed_precision.set_global_policy("float32")
    valid = read_json(model_dir(project, "causal-mix") / "valid_metrics.json", "valid metrics")
    assert valid["ndcg_at_10"] > 1.2 * most_popular_valid_ndcg(project), valid["ndcg_at_10"]


def test_a_diverging_run_stops_with_one_line_and_leaves_the_earlier_model(trained, tmp_path, capsys):
    project = tmp_path / "synth"
    shutil.copytree(trained, project, symlinks=True)
    before = {p.name: p.read_bytes() for p in model_dir(project).iterdir() if p.is_file()}
    set_params(project, train_val={"learning_rate": 1e4, "num_warmup_steps": 0, "log_every_steps": 5,
                                   "num_train_steps": 40, "eval_every_steps": 40})
    assert run("train_val", project) == 2
    err = capsys.readouterr().err
    assert "training diverged: the loss is nan at step 5; lower train_val.learning_rate (10000)" in err, err[-2000:]
    assert "Traceback" not in err
    assert {p.name: p.read_bytes() for p in model_dir(project).iterdir() if p.is_file()} == before


def test_a_failed_first_run_leaves_no_model_files_to_contradict_the_next(tmp_path, capsys):
    project = new_project(tmp_path, model_name="first", batch_size=100000)
    assert run("train_val", project) == 2
    assert "fewer examples than train_val.batch_size" in capsys.readouterr().err
    assert not (model_dir(project, "first") / "model.json").exists()
    set_params(project, train_val={"batch_size": 32, "num_train_steps": 10, "eval_every_steps": 10,
                                   "model": {"hidden_size": 16, "intermediate_size": 32}})
    assert run("train_val", project) == 0
