"""Shared fixtures: synthetic projects in temporary folders, tracking off unless a test opts in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from bert4rec import synthetic

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _tracking_off(monkeypatch):
    monkeypatch.setenv("BERT4REC_TRACKING", "off")


def shared_file(relative: str) -> Path:
    """A licensed benchmark file from ../shared/data: skipped locally if absent, a failure in CI."""
    path = SHARED_DATA / relative
    if not path.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{path} is missing; CI must have ../shared beside the checkout")
        pytest.skip(f"{path} not available")
    return path


def make_project(root: Path, data: Path, **sections) -> Path:
    """projects/<name>-style folder with the input in data/external and a params.yaml."""
    root.mkdir(parents=True, exist_ok=True)
    external = root / "data" / "external"
    external.mkdir(parents=True, exist_ok=True)
    target = external / data.name
    if not target.exists():
        target.symlink_to(data.resolve())
    params = {"raw": {"input": f"data/external/{data.name}"}}
    for section, values in sections.items():
        params.setdefault(section, {}).update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def run_stage(stage: str, project: Path) -> int:
    from bert4rec import cli

    return cli.main([stage, "--project", str(project)])


def set_params(project: Path, **sections) -> None:
    """Merge values into a project's params.yaml, section by section."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in sections.items():
        params.setdefault(section, {}).update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params))


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
