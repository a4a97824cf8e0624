"""bench-inference: the release's code and today's, each end to end on ML-1M, timed in one run."""

from __future__ import annotations

import json

import pytest

from bert4rec.errors import UserError
from bert4rec.tools import bench_inference
from tests.helpers import shared_file


def test_times_the_release_and_today_on_every_user_and_reports_the_ratio(tmp_path, capsys):
    data = shared_file("ml-1m/ml-1m.txt.gz")
    out = tmp_path / "inference.json"
    assert bench_inference.main(["--data", str(data), "--work", str(tmp_path / "work"), "--out", str(out),
                                 "--rounds", "1", "--train-minutes", "0.05"]) == 0
    result = json.loads(out.read_text())
    release, today = result["summary"]["release"], result["summary"]["today"]
    assert release["users"] == today["users"] == 6040 and release["batch_size"] == today["batch_size"]
    assert result["ratio"] == round(today["users_per_second"] / release["users_per_second"], 2)
    assert result["met"] == (result["ratio"] >= 2.0)
    assert [len(runs) for runs in result["rounds"].values()] == [1, 1]
    assert all(len(run["seconds_per_pass"]) == 3 for runs in result["rounds"].values() for run in runs)
    # each side trained its own model with its own code
    assert (tmp_path / "work" / "release" / "ml1m" / "models" / bench_inference.RELEASE_MODEL / "model.json").exists()
    assert result["setup"]["today"]["objective"] == "causal"
    assert (tmp_path / "work" / "today" / "ml1m" / "models" / "bench-causal").is_dir()
    assert "round 1 release:" in capsys.readouterr().out


def test_a_checkout_without_the_release_in_its_history_is_told_what_is_needed(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_inference, "REPOSITORY", tmp_path)  # not a git repository
    with pytest.raises(UserError, match="commit 2402203.*not in this checkout's git history.*unshallow"):
        bench_inference.release_source(tmp_path / "work")
    assert not (tmp_path / "work").exists()
