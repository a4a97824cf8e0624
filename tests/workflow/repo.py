"""Helpers for the workflow tests: a throwaway copy of the repository (git + DVC, bare `origin`)
to run the real pipeline in, and servers started on 127.0.0.1.

The stage processes are the venv's `bert4rec` and `dvc`, exactly what `make <stage>` runs;
servers (MLflow, moto S3) listen on 127.0.0.1 and are stopped by their own PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COPIED = ("src", "Makefile", "pyproject.toml", ".gitignore", ".dvcignore", ".dvc/config", ".dvc/.gitignore",
          "config/pipeline.yaml")
# Tiny budgets so the whole chain runs in seconds on 2 cores.
TINY = {
    "tfrecord": {"max_seq_length": 20, "max_predictions_per_seq": 4, "num_shards": 2, "pool_size": 1},
    "train_val": {"objective": "masked", "num_train_steps": 20, "num_warmup_steps": 2, "batch_size": 32,
                  "eval_every_steps": 10, "save_checkpoints_steps": 10, "log_every_steps": 5,
                  "model": {"hidden_size": 16, "intermediate_size": 32, "max_position_embeddings": 20}},
    "test": {"batch_size": 128},
    "inference": {"batch_size": 128, "top_k": 5},
}


def sh(args, cwd, env=None, check=True, timeout=600) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, text=True, capture_output=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def flags(settings: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in settings.items():
        if isinstance(value, dict):
            out += flags(value, f"{prefix}{key}.")
        else:
            out += ["--set", f"{prefix}{key}={value}"]
    return out


class Repo:
    """A temporary clone-like checkout; run() calls the venv's console scripts inside it."""

    def __init__(self, root: Path, origin: Path, env: dict):
        self.root, self.origin, self.env = root, origin, env

    def run(self, *args, check=True, env=None, timeout=600) -> subprocess.CompletedProcess:
        command = list(args)
        if command[0] in ("bert4rec", "dvc", "mlflow"):
            command[0] = str(BIN / command[0])
        return sh(command, self.root, {**self.env, **(env or {})}, check=check, timeout=timeout)

    def git(self, *args) -> str:
        return sh(["git", *args], self.root, self.env).stdout.strip()

    def commits(self) -> list[str]:
        return self.git("log", "--format=%s").splitlines()

    def origin_head(self, branch: str = "main") -> str:
        return sh(["git", "rev-parse", branch], self.origin).stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(args: list[str], url: str, cwd: Path, env: dict, log: Path, ready_timeout: float = 90):
    """Start a server in its own process group, wait until `url` answers, stop it by its PID."""
    with open(log, "w") as out:
        process = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + ready_timeout
        while True:
            if process.poll() is not None:
                raise AssertionError(f"{args[0]} exited early:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2):
                    break
            except Exception:
                if time.time() > deadline:
                    raise AssertionError(f"{url} not ready after {ready_timeout}s:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)  # the group led by our own child's PID
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
