"""Fixtures every test can use: synthetic projects in temporary folders, tracking off unless a test
opts in. Shared helper functions are in helpers.py."""

from __future__ import annotations

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
