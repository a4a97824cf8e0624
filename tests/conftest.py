"""Fixtures every test can use: synthetic projects in temporary folders, tracking off unless a test
opts in. Shared helper functions are in helpers.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bert4rec.tools import synthetic
from helpers import make_project


@pytest.fixture(autouse=True)
def _tracking_off(monkeypatch):
    monkeypatch.setenv("BERT4REC_TRACKING", "off")


@pytest.fixture
def synthetic_file(tmp_path) -> Path:
    path = tmp_path / "events.txt"
    synthetic.write(synthetic.generate(users=300, items=80, mean_length=25, seed=7), path, "sequence_lines")
    return path


@pytest.fixture
def synthetic_project(tmp_path, synthetic_file) -> Path:
    return make_project(
        tmp_path / "projects" / "synth",
        synthetic_file,
        tfrecord={"max_seq_length": 20, "max_predictions_per_seq": 4, "num_shards": 2, "pool_size": 1},
    )


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a folder on a tmpfs of that size (e.g. "2m"), unmounted after the test.

    Mounting needs root; where it is not permitted the test is skipped, never failed.
    """
    mounted = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        try:
            result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                    capture_output=True, text=True)
        except FileNotFoundError:
            pytest.skip("no `mount` command: the full-disk tests need to mount a small tmpfs")
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)
