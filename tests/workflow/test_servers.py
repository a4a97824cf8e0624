"""Tracking and remote set-ups: the local defaults (no `.env`), and `.env` pointing at a tracking
server or S3 endpoint that does not answer. (A live tracking server and moto S3: test_e2e.)"""

from __future__ import annotations

import shutil
import socket

import pytest
import yaml

from bert4rec.errors import UserError
from bert4rec.workflow import make

from .repo import TINY, flags, free_port, server

pytestmark = pytest.mark.slow

KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_DEFAULT_REGION": "us-east-1"}


def write_env(repo, **values) -> None:
    (repo.root / ".env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))


def test_local_defaults_sqlite_store_directory_remote_and_ui(repo, events):
    """No .env: runs go to mlflow.db, outputs to the .dvc-remote directory, `make ui` serves them."""
    import json
    import urllib.request

    import mlflow

    repo.run("bert4rec", "project", "synth", str(events), *flags(TINY))
    result = repo.run("make", "-s", "tfrecord", env={"BERT4REC_TRACKING": "on"})
    remote = repo.root / ".dvc-remote"
    assert f"dvc: pushed outputs to {remote}" in result.stdout
    client = mlflow.MlflowClient(f"sqlite:///{repo.root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bert4rec-synth")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["stage"] for r in runs) == ["raw", "tfrecord", "tfrecord"]  # parent + 2 children

    records = repo.root / "projects/synth/data/processed/records"
    manifest = (records / "manifest.json").read_bytes()
    shutil.rmtree(records)
    shutil.rmtree(repo.root / ".dvc/cache")
    repo.run("dvc", "pull", "tfrecord")  # later stages have not run yet
    assert (records / "manifest.json").read_bytes() == manifest

    port = free_port()
    with server(["make", "-s", "ui", f"PORT={port}"], f"http://127.0.0.1:{port}/health", repo.root, repo.env,
                repo.root.parent / "ui.log"):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search",
            data=json.dumps({"max_results": 10}).encode(), headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            names = [e["name"] for e in json.loads(response.read())["experiments"]]
    assert "bert4rec-synth" in names


def test_unreachable_tracking_server_is_one_clear_error(repo, events):
    url = f"http://127.0.0.1:{free_port()}"
    repo.run("bert4rec", "project", "synth", str(events), *flags(TINY))
    write_env(repo, MLFLOW_TRACKING_URI=url)
    before = repo.commits()
    result = repo.run("make", "-s", "raw", env={"BERT4REC_TRACKING": "on"}, check=False)
    assert result.returncode != 0
    assert f"MLflow tracking server {url} is unreachable" in result.stderr and "Traceback" not in result.stderr
    assert repo.commits() == before  # nothing committed, nothing run
    assert not (repo.root / "projects/synth/data/interim/sequences.parquet").exists()
    # the stage on its own (as `dvc repro` runs it) says the same
    result = repo.run("bert4rec", "raw", env={"BERT4REC_TRACKING": "on"}, check=False)
    assert result.returncode == 2 and url in result.stderr


@pytest.mark.parametrize("store", ["htp://typo:5000", "garbage mlflow.db"])
def test_a_tracking_store_that_cannot_open_stops_make_before_it_commits(repo, events, store):
    repo.run("bert4rec", "project", "synth", str(events), *flags(TINY))
    if store.endswith("mlflow.db"):
        (repo.root / "mlflow.db").write_text("not a database")
    else:
        write_env(repo, MLFLOW_TRACKING_URI=store)
    before = repo.commits()
    result = repo.run("make", "-s", "raw", env={"BERT4REC_TRACKING": "on"}, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "MLflow tracking store" in result.stderr and "cannot be opened" in result.stderr
    assert ("MLFLOW_TRACKING_URI" if "typo" in store else "mlflow.db") in result.stderr
    assert repo.commits() == before


def test_unreachable_s3_endpoint_keeps_local_results(repo, events):
    endpoint = f"http://127.0.0.1:{free_port()}"
    write_env(repo, DVC_REMOTE_URL="s3://nowhere/bert4rec", DVC_REMOTE_ENDPOINT_URL=endpoint, **KEYS)
    repo.run("bert4rec", "project", "synth", str(events), *flags(TINY))
    result = repo.run("make", "-s", "raw", check=False, env={"AWS_MAX_ATTEMPTS": "1"})
    assert result.returncode != 0
    assert "s3://nowhere/bert4rec" in result.stderr and endpoint in result.stderr
    assert "committed locally" in result.stderr and "Traceback" not in result.stderr
    # the stage ran and its lock is committed: local results intact
    assert (repo.root / "projects/synth/data/interim/sequences.parquet").exists()
    assert "raw" in yaml.safe_load(repo.git("show", "HEAD:dvc.lock"))["stages"]
    assert repo.run("dvc", "status", "raw").stdout.strip().endswith("up to date.")


def test_ui_on_a_port_in_use_says_so_and_starts_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".git").mkdir()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"127.0.0.1:{port}: cannot serve the MLflow UI there .*PORT=<n>"):
            make.main_ui(["--port", str(port)])
    assert [p.name for p in tmp_path.iterdir()] == [".git"]


def test_ui_outside_a_repository_creates_no_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(UserError, match="no MLflow store here .*run `make ui` from the repository's root"):
        make.main_ui([])
    assert list(tmp_path.iterdir()) == []
