"""train_val, test and inference stages on a learnable synthetic project (tiny model, CPU)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import yaml

from bert4rec import synthetic
from bert4rec.fileio import read_json
from conftest import REPO, make_project, run_stage, set_params

TINY = {
    "model_name": "tiny",
    "model": {"hidden_size": 32, "intermediate_size": 64, "max_position_embeddings": 20,
              "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    "batch_size": 32, "num_train_steps": 600, "num_warmup_steps": 30, "learning_rate": 0.003,
    "eval_every_steps": 200, "save_checkpoints_steps": 200, "log_every_steps": 100, "keep_checkpoints": 2,
    "early_stopping_patience": 0, "length_buckets": 1,
}
TFRECORD = {"max_seq_length": 20, "max_predictions_per_seq": 4, "num_shards": 2, "pool_size": 1}


run = run_stage


def model_dir(project, name="tiny"):
    return project / "models" / name


def new_project(root, **train_val):
    """A synthetic log with a strong successor pattern (what BERT4Rec can learn, most-popular can't)."""
    data = root / "events.txt"
    table = synthetic.generate(users=400, items=200, mean_length=25, seed=3, follow_prob=0.9, successors=1, zipf=0.5)
    synthetic.write(table, data, "sequence_lines")
    project = make_project(root / "projects" / "synth", data, tfrecord=TFRECORD, train_val={**TINY, **train_val},
                           test={"per_user_ranks": True, "sampled_negatives": 20},
                           inference={"user_embeddings": True, "top_k": 5})
    assert run("raw", project) == 0 and run("tfrecord", project) == 0
    return project


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    os.environ["BERT4REC_TRACKING"] = "off"
    project = new_project(tmp_path_factory.mktemp("trained"))
    assert run("train_val", project) == 0
    return project


def test_tiny_model_learns_the_sequential_pattern(trained):
    valid = read_json(model_dir(trained) / "valid_metrics.json", "valid metrics")
    baseline = most_popular_valid_ndcg(trained)
    assert valid["ndcg_at_10"] > 1.3 * baseline, (valid["ndcg_at_10"], baseline)
    info = read_json(model_dir(trained) / "model.json", "model")
    assert info["trained_steps"] == 600 and info["training_sequences_per_second"] > 0
    saved = yaml.safe_load((model_dir(trained) / "config.yaml").read_text())
    assert saved["train_val"]["num_train_steps"] == 600 and saved["tfrecord"]["max_seq_length"] == 20
    assert (model_dir(trained) / "items.parquet").read_bytes() == (trained / "references" / "items.parquet").read_bytes()
    assert sorted(p.name for p in (model_dir(trained) / "checkpoints").glob("ckpt-*")) == ["ckpt-400.npz", "ckpt-600.npz"]
    assert any((model_dir(trained) / "tensorboard").iterdir())


def test_test_stage_reports_model_and_most_popular(trained):
    assert run("test", trained) == 0
    report = json.loads((trained / "results" / "tiny" / "test_metrics.json").read_text())
    for key in ("ndcg_at_1", "ndcg_at_10", "ndcg_at_100", "hit_at_10", "mrr", "rank100", "rank100_percent",
                "coverage_at_10", "sampled_ndcg_at_10"):
        assert key in report and key in report["most_popular"]
    assert report["users"] == 400
    assert report["ndcg_at_10"] > report["most_popular"]["ndcg_at_10"]
    ranks = pd.read_parquet(trained / "results" / "tiny" / "test_ranks.parquet")
    assert len(ranks) == 400 and set(ranks.columns) == {"user_id", "target_item_id", "rank"}
    assert ranks["rank"].between(1, 200).all()
    assert (ranks["rank"] <= 10).mean() == pytest.approx(report["hit_at_10"])


def test_inference_decodes_ids_and_matches_the_saved_model(trained):
    assert run("inference", trained) == 0
    predictions = pd.read_parquet(trained / "results" / "tiny" / "predictions.parquet")
    assert len(predictions) == 400 * 5 and predictions["rank"].tolist()[:5] == [1, 2, 3, 4, 5]
    embeddings = pd.read_parquet(trained / "results" / "tiny" / "user_embeddings.parquet")
    assert len(embeddings) == 400 and len(embeddings["embedding"][0]) == 32
    events = pd.read_csv(trained / "data" / "external" / "events.txt", sep=" ", header=None, names=["user", "item"])
    histories = events.groupby("user", sort=False)["item"].apply(list)
    users = histories.index[:50]
    for user in users[:5]:  # seen items are never recommended; ids are the original ones
        top = predictions[predictions.user_id == user]["item_id"]
        assert not set(top) & set(histories[user])
    served = tf.saved_model.load(str(model_dir(trained) / "saved_model")).signatures["serving_default"]
    width = max(len(histories[u]) for u in users)
    padded = np.full((len(users), width + 3), -1, dtype=np.int64)  # -1: padding / unknown ids
    for row, user in enumerate(users):
        padded[row, -len(histories[user]):] = histories[user]
    out = served(item_ids=tf.constant(padded), k=tf.constant(5))
    expected = predictions.set_index(["user_id", "rank"])["item_id"]
    for row, user in enumerate(users):
        assert out["item_ids"].numpy()[row].tolist() == [expected[(user, r)] for r in range(1, 6)]
    scores = predictions.set_index(["user_id", "rank"])["score"]
    np.testing.assert_allclose(out["scores"].numpy()[0], [scores[(users[0], r)] for r in range(1, 6)], rtol=1e-4)


def test_resume_continues_then_only_evaluates(trained, tmp_path, capfd):
    project = tmp_path / "synth"
    shutil.copytree(trained, project, symlinks=True)
    set_params(project, train_val={"num_train_steps": 700})
    assert run("train_val", project) == 0
    assert "resumed tiny from step 600" in capfd.readouterr().err
    info = read_json(model_dir(project) / "model.json", "model")
    assert info["trained_steps"] == 700
    before = sorted(p.name for p in (model_dir(project) / "checkpoints").iterdir())
    assert run("train_val", project) == 0  # already at num_train_steps: evaluation only
    log = capfd.readouterr().err
    assert "resumed tiny from step 700" in log and "step 700: valid" not in log
    assert sorted(p.name for p in (model_dir(project) / "checkpoints").iterdir()) == before


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

    info = json.loads((model_dir(project) / "model.json").read_text())
    (model_dir(project) / "model.json").write_text(json.dumps({**info, "vocabulary_sha256": "0" * 64}))
    shutil.rmtree(project / "results", ignore_errors=True)
    assert run("test", project) == 2
    assert "was trained with another item vocabulary" in capsys.readouterr().err
    assert not (project / "results" / "tiny" / "test_metrics.json").exists()

    set_params(project, inference={"model_name": "never-trained"})
    assert run("inference", project) == 2
    assert "no trained model 'never-trained'; run the train_val stage first" in capsys.readouterr().err


def test_empty_test_split_is_refused(trained, tmp_path, capsys):
    project = tmp_path / "synth"
    shutil.copytree(trained, project, symlinks=True)
    shutil.rmtree(project / "results", ignore_errors=True)
    manifest_path = project / "data" / "processed" / "records" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["splits"]["test"]["examples"] = 0
    manifest_path.write_text(json.dumps(manifest))
    assert run("test", project) == 2
    assert "the 'test' split is empty" in capsys.readouterr().err
    assert not (project / "results" / "tiny" / "test_metrics.json").exists()


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
                                   "model_name": "mirrored"})
    env = {**os.environ, "BERT4REC_TRACKING": "off"}
    done = subprocess.run([sys.executable, "-c", MIRRORED, str(project)], env=env, capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    info = read_json(model_dir(project, "mirrored") / "model.json", "model")
    assert info["trained_steps"] == 6 and info["replicas"] == 2


def most_popular_valid_ndcg(project):
    from bert4rec import dataset, metrics, scoring

    records = project / "data" / "processed" / "records"
    manifest = dataset.load_manifest(records)
    popular = scoring.history_counts(records, manifest, "valid")[None, :]
    evaluation = metrics.Evaluation(manifest["num_tokens"])
    for batch in dataset.eval_batches(records, manifest, "valid", 512).as_numpy_iterator():
        evaluation.add(np.repeat(popular, len(batch["target"]), 0), batch["target"], batch["history"])
    return evaluation.result()["ndcg_at_10"]


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
    assert len(predictions) == 400 * 5 and np.isfinite(predictions["score"]).all()
