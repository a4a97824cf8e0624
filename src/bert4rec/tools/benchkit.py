"""What the benchmarks (and the tests) share: the licensed data's place, scratch projects, and a
meter for a command's wall time and peak memory."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

from bert4rec.cli import Terminated
from bert4rec.errors import UserError
from bert4rec.params import merge

SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
ML1M = SHARED_DATA / "ml-1m" / "ml-1m.txt.gz"
ML100K = SHARED_DATA / "ml-100k" / "u.data.gz"


def require_data(path: Path, dataset: str, folder: str) -> None:
    """A benchmark's --data is a file, checked before any work starts."""
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        raise UserError(f"{path}: {dataset} file {what}; expected the file (../shared/data/{folder} beside the "
                        "checkout, or --data)")


def scratch_project(root: Path, data: Path, params: dict | None = None) -> Path:
    """A project folder as projects/<name>/ holds one: the input linked into data/external and a
    params.yaml (raw.input pointing at it, then `params`)."""
    external = root / "data" / "external"
    external.mkdir(parents=True, exist_ok=True)
    if not (external / data.name).exists():
        (external / data.name).symlink_to(data.resolve())
    values = merge({"raw": {"input": f"data/external/{data.name}"}}, params or {})
    (root / "params.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    return root


def stage_command(stage: str, project: Path) -> list[str]:
    return [sys.executable, "-m", "bert4rec.cli", stage, "--project", str(project)]


def _pss(process: psutil.Process) -> int:
    try:
        return process.memory_full_info().pss
    except psutil.Error:
        return 0


def measure(command: list[str], log: Path | None = None, tracking: bool = False, env: dict | None = None) -> dict:
    """Run a command: wall seconds, the largest process's peak RSS and the process tree's peak PSS.

    PSS (proportional set size) splits pages shared after fork() between the processes, so the
    tree's sum is the memory the command really needs (a sum of RSS counts them repeatedly).
    RSS is sampled 20 times a second; PSS, which costs ~15 ms per process to read, once a second.
    env: variables set on top of this process's (another source tree on PYTHONPATH: bench-inference).
    """
    env = {**os.environ, "BERT4REC_TRACKING": "on" if tracking else "off", **(env or {})}
    out = open(log, "w") if log else subprocess.DEVNULL
    started, process = time.perf_counter(), None
    try:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT if log else subprocess.PIPE,
                                   env=env, text=True)
        root, peak_rss, peak_pss, tick = psutil.Process(process.pid), 0, 0, 0
        while process.poll() is None:
            try:
                members = [root, *root.children(recursive=True)]
                peak_rss = max([peak_rss] + [m.memory_info().rss for m in members if m.is_running()])
            except psutil.Error:
                members = []
            if tick % 20 == 0:
                peak_pss = max(peak_pss, sum(_pss(member) for member in members))
            tick += 1
            time.sleep(0.05)
        stderr = process.stderr.read() if process.stderr else ""
    except KeyboardInterrupt as interrupt:
        if process is not None:
            stop(process, interrupt)
        raise
    finally:
        if log:
            out.close()
    if process.returncode:
        where = f"; see {log}" if log else f"\n{stderr.strip()[-3000:]}"
        raise UserError(f"benchmark step failed (exit {process.returncode}): {' '.join(command)}{where}")
    return {"wall_s": round(time.perf_counter() - started, 2), "peak_rss_mb": round(peak_rss / 2**20),
            "peak_pss_mb": round(peak_pss / 2**20)}


def run_probe(command: list[str], what: str, env: dict | None = None) -> dict:
    """A timing probe in its own process (tracking off): the JSON of its last stdout line."""
    done = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "BERT4REC_TRACKING": "off", **(env or {})})
    if done.returncode:
        raise UserError(f"{what} failed:\n{done.stderr.strip()[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def stop(process: subprocess.Popen, interrupt: KeyboardInterrupt, grace_seconds: float = 30.0) -> None:
    """The benchmark was interrupted: make its running stage unwind too (it removes its temporaries
    as a stage stopped by the user does), SIGKILL it past the grace period. Ctrl-C in a terminal
    reached the stage as well (one process group), so it is given the grace period to end alone:
    a SIGTERM on top would interrupt its cleanup. A SIGTERM reached the benchmark only: passed on.
    Without this a benchmark stopped with `kill` left its stage training on alone."""
    if not isinstance(interrupt, Terminated):
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace_seconds)
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_stage(stage: str, project: Path, logs: Path | None = None, tracking: bool = False) -> dict:
    """One stage as its own process, measured; its output goes to logs/<stage>.log."""
    log = None
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{stage}.log"
    return measure(stage_command(stage, project), log, tracking)
