"""Fixtures for the workflow tests: a temporary repository and a small event log."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bert4rec.tools import synthetic

from .repo import COPIED, REPO, Repo, sh


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Repo:
    root, origin = tmp_path / "work", tmp_path / "origin.git"
    root.mkdir()
    for name in COPIED:
        source, target = REPO / name, root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    (root / ".venv").symlink_to(REPO / ".venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "DVC_", "BERT4REC_"))}
    env.update(BERT4REC_TRACKING="off", GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
               GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com", PYTHONUNBUFFERED="1",
               TF_CPP_MIN_LOG_LEVEL="2")
    for name in ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    sh(["git", "init", "-q", "-b", "main"], root, env)
    (root / ".git" / "info" / "exclude").write_text(".venv\n")
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-q", "-m", "initial"], root, env)
    sh(["git", "init", "-q", "--bare", str(origin)], tmp_path, env)
    sh(["git", "remote", "add", "origin", str(origin)], root, env)
    return Repo(root, origin, env)


@pytest.fixture
def events(tmp_path) -> Path:
    path = tmp_path / "events.txt"
    synthetic.write(synthetic.generate(users=120, items=40, mean_length=12, seed=3), path, "sequence_lines")
    return path


