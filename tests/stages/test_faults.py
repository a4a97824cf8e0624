"""Faults while the data and model stages run (slow: `make check-faults`).

- SIGKILL of raw / tfrecord mid-run leaves the dead run's temporaries; the rerun removes them.
  A temporary of a stage that is still running is never removed by another run.
- SIGKILL of one tfrecord worker (the out-of-memory killer) stops the stage with one error.
- SIGTERM to a stage's process group (a scheduler, a container stop) unwinds it as Ctrl-C does:
  `terminated`, exit 143, no temporaries, the earlier outputs untouched.
- A full disk (a small tmpfs mounted here) at any write: one error naming the path, exit 2, and
  nothing half-written or temporary left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from bert4rec import fileio
from bert4rec.data.manifest import Manifest
from helpers import make_project, run_stage, set_params, single_error, written_files

pytestmark = pytest.mark.faults

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def big_input(tmp_path_factory) -> Path:
    """A log big enough that raw and tfrecord run for seconds (3M events), made by `bert4rec synth`."""
    path = tmp_path_factory.mktemp("big") / "events.txt"
    subprocess.run([str(BIN / "bert4rec"), "synth", str(path), "--users", "150000", "--items", "5000",
                    "--mean-length", "20"], check=True, capture_output=True)
    return path


def start(stage: str, project: Path, log: Path, sigint=signal.SIG_DFL) -> subprocess.Popen:
    with open(log, "w") as out:  # SIGINT as in a terminal (a shell starts background jobs with it ignored)
        return subprocess.Popen([str(BIN / "bert4rec"), stage, "--project", str(project)], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "BERT4REC_TRACKING": "off"},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))


def wait_for(folder: Path, prefix: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> Path:
    """The first temporary `.<prefix>.<pid>-*.tmp` of `process` in `folder` that holds data."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, f"the stage ended before it could be interrupted:\n{log.read_text()[-2000:]}"
        for path in folder.glob(f".{prefix}.{process.pid}-*.tmp") if folder.exists() else []:
            size = sum(p.stat().st_size for p in path.rglob("*")) if path.is_dir() else path.stat().st_size
            if size > 0:
                return path
        time.sleep(0.01)
    raise AssertionError(f"no {prefix} temporary after {timeout}s")


def kill(process: subprocess.Popen) -> None:
    """SIGKILL the stage and the workers it forked (its own process group), and reap them."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def temporaries(project: Path) -> list[str]:
    return sorted(str(p.relative_to(project)) for p in project.rglob("*") if fileio.TEMPORARY.match(p.name))


def rerun(stage: str, project: Path, timeout: float = 600) -> None:
    """Run a stage to the end. Its output goes to a file, not a pipe that a leftover process could
    hold open; past `timeout` the failure shows what its process group was doing."""
    log = project.parent / f"{stage}-rerun.log"
    process = start(stage, project, log)
    try:
        assert process.wait(timeout=timeout) == 0, log.read_text()[-3000:]
    except subprocess.TimeoutExpired:
        group = subprocess.run(["ps", "-o", "pid,stat,etime,args", "-g", str(process.pid)], capture_output=True,
                               text=True).stdout
        kill(process)
        raise AssertionError(f"{stage} still running after {timeout}s:\n{group}\n{log.read_text()[-3000:]}") from None


def workers_of(process: subprocess.Popen) -> list[psutil.Process]:
    """The pool workers a stage spawned (not multiprocessing's resource tracker)."""
    return [child for child in psutil.Process(process.pid).children()
            if "spawn_main" in " ".join(child.cmdline())]


@pytest.mark.parametrize("killed_while_writing", ["raw-spill", "sequences.parquet"])
def test_killed_raw_leaves_temporaries_that_the_rerun_removes(tmp_path, big_input, killed_while_writing):
    project = make_project(tmp_path / "p", big_input)
    interim = project / "data" / "interim"
    process = start("raw", project, tmp_path / "raw.log")
    wait_for(interim, killed_while_writing, process, tmp_path / "raw.log")
    kill(process)
    left = temporaries(project)
    assert any(f".{killed_while_writing}.{process.pid}-" in name for name in left), left
    rerun("raw", project)
    assert temporaries(project) == []
    assert sorted(p.name for p in interim.iterdir()) == ["raw_summary.json", "sequences.parquet"]
    assert json.loads((interim / "raw_summary.json").read_text())["users"] == 150000


def test_killed_tfrecord_leaves_temporaries_that_the_rerun_removes(tmp_path, big_input):
    project = make_project(tmp_path / "p", big_input, tfrecord={"pool_size": 2, "num_shards": 4})
    rerun("raw", project)
    processed = project / "data" / "processed"
    process = start("tfrecord", project, tmp_path / "tfrecord.log")
    wait_for(processed, "records", process, tmp_path / "tfrecord.log")
    kill(process)
    left = temporaries(project)
    assert f"data/processed/.records.{process.pid}-" in " ".join(left), left
    rerun("tfrecord", project)
    assert temporaries(project) == []
    manifest = Manifest.read(processed / "records")
    assert manifest.splits["valid"].examples == 150000
    assert sorted(p.name for p in processed.iterdir()) == ["records"]


def test_a_killed_tfrecord_worker_stops_the_stage_with_one_error(tmp_path, big_input):
    """The kernel's out-of-memory killer takes one worker: the stage says so and exits 2 (it does not
    wait forever for the lost shard), the other worker goes too, and nothing is left behind."""
    project = make_project(tmp_path / "p", big_input, tfrecord={"pool_size": 2, "num_shards": 4})
    rerun("raw", project)
    log = tmp_path / "tfrecord.log"
    process = start("tfrecord", project, log)
    wait_for(project / "data" / "processed", "records", process, log)
    workers = workers_of(process)
    assert len(workers) == 2, workers
    workers[0].kill()
    assert process.wait(timeout=120) == 2, log.read_text()[-2000:]
    assert group_is_gone(process.pid), "a worker outlived the stage"
    message = single_error(log.read_text())
    assert "worker process died" in message and "tfrecord.pool_size" in message, message
    assert temporaries(project) == []
    assert not (project / "data" / "processed").exists() or list((project / "data" / "processed").iterdir()) == []


def test_a_tfrecord_run_with_sigint_ignored_keeps_its_workers_through_a_ctrl_c(tmp_path, big_input):
    """DVC runs a stage with SIGINT ignored (Ctrl-C under `make` then stops it with SIGTERM): the
    workers ignore it too, where they died alone and the stage blamed a lost worker."""
    project = make_project(tmp_path / "p", big_input, tfrecord={"pool_size": 2, "num_shards": 4})
    rerun("raw", project)
    log = tmp_path / "tfrecord.log"
    process = start("tfrecord", project, log, sigint=signal.SIG_IGN)
    wait_for(project / "data" / "processed", "records", process, log)
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=300) == 0, log.read_text()[-2000:]
    assert Manifest.read(project / "data" / "processed" / "records").splits["valid"].examples == 150000


def file_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def group_is_gone(pgid: int, timeout: float = 30) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("stage, folder, prefix, stop", [
    ("raw", "data/interim", "raw-spill", signal.SIGTERM), ("tfrecord", "data/processed", "records", signal.SIGTERM),
    ("tfrecord", "data/processed", "records", signal.SIGINT)])
def test_sigterm_unwinds_a_stage_and_its_workers(tmp_path, big_input, stage, folder, prefix, stop):
    """For tfrecord the signal comes once the third of 3 shards is being written, when one worker
    may be waiting, idle, on the pool's queue. Ctrl-C (SIGINT to the group) ends the workers at
    once: the stage says interrupted, not that a worker died."""
    project = make_project(tmp_path / "p", big_input, tfrecord={"pool_size": 2, "num_shards": 3})
    rerun("raw", project)
    if stage == "tfrecord":
        rerun("tfrecord", project)
    before = file_digests(project / "data")
    log = tmp_path / f"{stage}.log"
    process = start(stage, project, log)
    temporary = wait_for(project / folder, prefix, process, log)
    while stage == "tfrecord" and not list(temporary.glob("*-00002-of-00003.tfrecord")):
        assert process.poll() is None, log.read_text()[-2000:]
        time.sleep(0.01)
    time.sleep(0.5 if stage == "tfrecord" else 0)
    os.killpg(process.pid, stop)
    assert process.wait(timeout=120) == 128 + stop, log.read_text()[-2000:]
    assert group_is_gone(process.pid), "a worker outlived the stage"
    said = "terminated" if stop == signal.SIGTERM else "interrupted"
    assert log.read_text().splitlines()[-1] == said and "Traceback" not in log.read_text()
    assert temporaries(project) == []
    assert file_digests(project / "data") == before


def test_a_running_stages_temporaries_are_left_alone(tmp_path, big_input):
    """While raw is still spilling, another process's sweep of the folder keeps its temporaries
    (and a second raw on the project is refused by the project's lock); the first one finishes."""
    project = make_project(tmp_path / "p", big_input)
    interim = project / "data" / "interim"
    first = start("raw", project, tmp_path / "first.log")
    spill = wait_for(interim, "raw-spill", first, tmp_path / "first.log")
    assert fileio.remove_stale_temporaries(interim) == [] and spill.exists()
    second = subprocess.run([str(BIN / "bert4rec"), "raw", "--project", str(project)], capture_output=True, text=True,
                            env={**os.environ, "BERT4REC_TRACKING": "off"})
    assert second.returncode == 2 and "is busy" in single_error(second.stderr) and spill.exists()
    assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-2000:]
    assert temporaries(project) == []
    assert json.loads((interim / "raw_summary.json").read_text())["users"] == 150000


# ---------------------------------------------------------------- a full disk

OUTPUTS = {
    "raw": ["data/interim/sequences.parquet", "data/interim/raw_summary.json", "references/users.parquet"],
    "tfrecord": ["data/processed/records", "references/items.parquet"],
    "train_val": ["models/tiny", "results/tiny/train_val_curves.csv"],
    "test": ["results/tiny/test_metrics.json", "results/tiny/test_ranks.parquet"],
    "inference": ["results/tiny/predictions.parquet", "results/tiny/user_embeddings.parquet"],
}
# What a train_val stopped by a full disk keeps for a rerun to resume from (each file complete):
# the model description written before training, the checkpoints (in the resumable area outside
# DVC's outputs) and the TensorBoard log.
RESUMABLE = re.compile(r"models/tiny/(config\.yaml|items\.parquet|model\.json|tensorboard/.+)"
                       r"|checkpoints/tiny/[^/]+/.+\.npz")
LEAVE_BYTES = (0, 8 << 10, 96 << 10, 512 << 10, 4 << 20)


def files(root: Path) -> set[str]:
    return set(written_files(root))


def fill(disk: Path, leave: int) -> None:
    """Take all the free space of the disk but `leave` bytes."""
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "wb") as handle:
        handle.write(b"\0" * max(0, free - leave))


def copy_project(trained: Path, disk: Path, stage: str) -> Path:
    project = disk / "p"
    shutil.copytree(trained, project, symlinks=True)
    for output in OUTPUTS[stage]:  # as `dvc repro` does before it runs a stage
        path = project / output
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    if stage == "train_val":
        set_params(project, train_val={"num_train_steps": 20, "eval_every_steps": 10, "save_checkpoints_steps": 10})
    return project


def check_what_is_left(stage: str, project: Path, new: set[str]) -> None:
    if stage != "train_val":
        assert new == set(), new  # no output, no temporary
        return
    assert all(RESUMABLE.fullmatch(name) for name in new), new
    for name in new:
        if name.endswith(".npz"):
            with np.load(project / name) as arrays:
                assert arrays.files
        elif name.endswith(".json"):
            json.loads((project / name).read_text())


@pytest.mark.parametrize("stage", list(OUTPUTS))
def test_full_disk_is_one_error_naming_the_path_and_nothing_half_written(stage, trained, small_disk, capsys):
    disk = small_disk("32m")
    failed = []
    for leave in LEAVE_BYTES:
        project = copy_project(trained, disk, stage)
        before = files(project)
        fill(disk, leave)
        capsys.readouterr()
        code = run_stage(stage, project)
        err = capsys.readouterr().err
        new = files(project) - before
        if code == 0:
            assert all((project / output).exists() for output in OUTPUTS[stage] if "curves" not in output)
        else:
            assert code == 2
            assert re.fullmatch(rf"error: {project}/\S+: no space left on device.*", single_error(err)), err
            assert temporaries(project) == []
            check_what_is_left(stage, project, new)
            failed.append(leave)
        shutil.rmtree(project)
        (disk / "filler").unlink()
    assert failed and failed[0] == 0, failed  # the disk really was full at some write
