"""The test stage: the trained model and the most-popular baseline on the held-out items."""

import json
import shutil

import pandas as pd
import pytest

from helpers import run_stage, set_params

from .tiny import USERS, model_dir

run = run_stage


def test_test_stage_reports_model_and_both_baselines(trained):
    assert run("test", trained) == 0
    report = json.loads((trained / "results" / "tiny" / "test_metrics.json").read_text())
    for key in ("ndcg_at_1", "ndcg_at_10", "ndcg_at_100", "hit_at_10", "mrr", "rank100", "rank100_percent",
                "coverage_at_10", "sampled_ndcg_at_10"):
        assert key in report and key in report["most_popular"] and key in report["item_to_item"]
    assert report["users"] == USERS
    assert report["ndcg_at_10"] > report["most_popular"]["ndcg_at_10"]
    # the synthetic log follows one successor per item: "users who took X next took Y" learns it too
    assert report["item_to_item"]["ndcg_at_10"] > report["most_popular"]["ndcg_at_10"]
    assert report["item_to_item"]["users"] == USERS
    ranks = pd.read_parquet(trained / "results" / "tiny" / "test_ranks.parquet")
    assert len(ranks) == USERS and set(ranks.columns) == {"user_id", "target_item_id", "rank"}
    assert ranks["rank"].between(1, 200).all()
    assert (ranks["rank"] <= 10).mean() == pytest.approx(report["hit_at_10"])


def test_model_from_another_vocabulary_is_refused(trained, tmp_path, capsys):
    project = tmp_path / "synth"
    shutil.copytree(trained, project, symlinks=True)
    info = json.loads((model_dir(project) / "model.json").read_text())
    (model_dir(project) / "model.json").write_text(json.dumps({**info, "vocabulary_sha256": "0" * 64}))
    shutil.rmtree(project / "results", ignore_errors=True)
    assert run("test", project) == 2
    assert "was trained with another item vocabulary" in capsys.readouterr().err
    assert not (project / "results" / "tiny" / "test_metrics.json").exists()


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


def test_more_sampled_negatives_than_a_user_has_candidates_never_rank_worse_than_the_full_catalogue(trained, tmp_path):
    project = tmp_path / "synth"
    shutil.copytree(trained, project, symlinks=True)
    set_params(project, test={"sampled_negatives": 199})  # the catalogue has 200 items: every user runs short
    assert run("test", project) == 0
    report = json.loads((project / "results" / "tiny" / "test_metrics.json").read_text())
    for scores in (report, report["most_popular"], report["item_to_item"]):
        for metric in ("hit_at_1", "hit_at_10", "mrr"):
            assert scores[f"sampled_{metric}"] >= scores[metric], (metric, scores)


@pytest.mark.parametrize("change, message", [
    ({"train_val": {"model": {"hidden_size": 16}}},
     "params contradict the saved model 'tiny' (train_val.model.hidden_size: saved 32, params 16); rerun train_val"),
    ({"train_val": {"objective": "causal"}}, "(train_val.objective: saved 'masked', params 'causal')"),
    ({"tfrecord": {"max_seq_length": 30}},
     "the records were written with other tfrecord params (tfrecord.max_seq_length: records 20, params 30); "
     "rerun the tfrecord stage"),
])
def test_params_changed_since_training_are_named_not_silently_ignored(trained, tmp_path, capsys, change, message):
    project = tmp_path / "synth"
    shutil.copytree(trained, project, symlinks=True)
    set_params(project, **change)
    for stage in ("test", "inference"):
        assert run(stage, project) == 2
        assert message in capsys.readouterr().err, stage
