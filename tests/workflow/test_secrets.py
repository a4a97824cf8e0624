"""Secrets in `.env` (AWS keys, tracking-server credentials) never reach anything the pipeline
writes or prints: stages run through the real `make <stage>` (git, DVC, MLflow) with canary
values, then every file of the repository (git history, dvc.lock, mlflow.db, mlartifacts, the DVC
cache), the tracking server's store and the captured output are searched for them. `.env`
itself and `.dvc/config.local` (DVC's git-ignored place for remote credentials) are where they
belong. Slow: `make check-faults`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .repo import TINY, flags, free_port, server, sh

pytestmark = pytest.mark.faults

AWS = {"AWS_ACCESS_KEY_ID": "AKIACANARY7Q3X9Z", "AWS_SECRET_ACCESS_KEY": "canary-secret-4f1c9e7a2b",
       "AWS_DEFAULT_REGION": "us-east-1"}
TRACKING_USER, TRACKING_PASSWORD = "canary-user-8d2e", "canary-pass-6a0b3f"
UNUSED = {"SOME_API_TOKEN": "canary-token-91c7d5"}  # a secret no code reads: catches an environment dump
CANARIES = [AWS["AWS_ACCESS_KEY_ID"], AWS["AWS_SECRET_ACCESS_KEY"], TRACKING_USER, TRACKING_PASSWORD,
            UNUSED["SOME_API_TOKEN"]]
WHERE_THEY_BELONG = {".env", ".dvc/config.local"}


def write_env(repo, **values) -> None:
    (repo.root / ".env").write_text("".join(f"{k}={v}\n" for k, v in {**values, **UNUSED}.items()))


def leaks_in_files(root: Path, skip: set[str] = frozenset(), canaries: list[str] = CANARIES) -> list[str]:
    found = []
    for folder, subfolders, names in os.walk(root):  # does not follow the .venv link
        subfolders[:] = [s for s in subfolders if s != ".venv"]
        for name in names:
            path = Path(folder) / name
            relative = str(path.relative_to(root))
            if relative in skip or path.is_symlink():
                continue
            data = path.read_bytes()
            found += [f"{relative}: {canary}" for canary in canaries if canary.encode() in data]
    return found


def leaks_in_git(repo_dir: Path, env: dict) -> list[str]:
    history = sh(["git", "log", "--all", "-p", "--format=%H %s%n%b"], repo_dir, env).stdout
    return [f"git history of {repo_dir.name}: {canary}" for canary in CANARIES if canary in history]


def leaks_in_output(*results) -> list[str]:
    text = "".join(result.stdout + result.stderr for result in results)
    return [f"output: {canary}" for canary in CANARIES if canary in text]


def start_moto(repo, tmp_path):
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = [str(repo.root / ".venv/bin/moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    return endpoint, server(moto, f"{endpoint}/moto-api/", tmp_path, repo.env, tmp_path / "moto.log")


def test_aws_keys_stay_out_of_everything_the_pipeline_writes(repo, events, tmp_path):
    """Local sqlite store and mlartifacts, an S3 remote (moto) with canary keys, raw -> inference."""
    import boto3

    endpoint, moto = start_moto(repo, tmp_path)
    with moto:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket="dvc-store")
        write_env(repo, DVC_REMOTE_URL="s3://dvc-store/bert4rec", DVC_REMOTE_ENDPOINT_URL=endpoint, **AWS)
        created = repo.run("bert4rec", "project", "synth", str(events), *flags(TINY))
        result = repo.run("make", "-s", "inference", env={"BERT4REC_TRACKING": "on"})
    assert "dvc: pushed outputs to s3://dvc-store/bert4rec" in result.stdout
    assert (repo.root / "mlflow.db").exists() and any((repo.root / "mlartifacts").rglob("MLmodel"))
    assert AWS["AWS_SECRET_ACCESS_KEY"] in (repo.root / ".dvc/config.local").read_text()  # DVC's place for them
    assert ".dvc/config.local" not in repo.git("ls-files").splitlines()
    leaks = (leaks_in_files(repo.root, WHERE_THEY_BELONG) + leaks_in_git(repo.root, repo.env)
             + leaks_in_git(repo.origin, repo.env) + leaks_in_output(created, result))
    assert leaks == []


def test_tracking_server_credentials_stay_out_of_everything_the_pipeline_writes(repo, events, tmp_path):
    """MLFLOW_TRACKING_URI=http://user:password@host: runs reach the server, the credentials
    appear nowhere (config_mlflow.yaml records the URI without them). The server's own store
    may name the user (MLflow attributes runs to the tracking user), never the password."""
    import mlflow

    port = free_port()
    store = tmp_path / "server"
    store.mkdir()
    command = [str(repo.root / ".venv/bin/mlflow"), "server", "--workers", "1", "--host", "127.0.0.1",
               "--port", str(port), "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
               "--default-artifact-root", str(store / "artifacts")]
    uri = f"http://127.0.0.1:{port}"
    with server(command, f"{uri}/health", tmp_path, repo.env, tmp_path / "mlflow.log"):
        write_env(repo, MLFLOW_TRACKING_URI=f"http://{TRACKING_USER}:{TRACKING_PASSWORD}@127.0.0.1:{port}")
        created = repo.run("bert4rec", "project", "synth", str(events), *flags(TINY))
        result = repo.run("make", "-s", "tfrecord", env={"BERT4REC_TRACKING": "on"})
        runs = mlflow.MlflowClient(uri).search_runs([mlflow.MlflowClient(uri).get_experiment_by_name(
            "bert4rec-synth").experiment_id])
    assert sorted(r.data.tags["stage"] for r in runs) == ["raw", "tfrecord", "tfrecord"]  # parent + 2 stages
    recorded = (repo.root / "projects/synth/config/config_mlflow.yaml").read_text()
    assert f"tracking_uri: {uri}\n" in recorded
    not_the_user = [canary for canary in CANARIES if canary != TRACKING_USER]
    leaks = (leaks_in_files(repo.root, WHERE_THEY_BELONG) + leaks_in_files(store, canaries=not_the_user)
             + leaks_in_git(repo.root, repo.env)
             + leaks_in_git(repo.origin, repo.env) + leaks_in_output(created, result)
             + [f"server log: {c}" for c in CANARIES if c in (tmp_path / "mlflow.log").read_text()])
    assert leaks == []


def test_unreachable_tracking_server_message_hides_the_credentials(repo, events):
    url = f"http://127.0.0.1:{free_port()}"
    repo.run("bert4rec", "project", "synth", str(events), *flags(TINY))
    write_env(repo, MLFLOW_TRACKING_URI=f"http://{TRACKING_USER}:{TRACKING_PASSWORD}@{url.removeprefix('http://')}")
    result = repo.run("make", "-s", "raw", env={"BERT4REC_TRACKING": "on"}, check=False)
    assert result.returncode != 0 and f"MLflow tracking server {url} is unreachable" in result.stderr
    assert leaks_in_output(result) == []
