"""Helpers the tests share (a plain module: tests import it, fixtures live in conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from bert4rec import cli
from bert4rec.params import merge
from bert4rec.tools.benchkit import SHARED_DATA, scratch_project

REPO = Path(__file__).resolve().parents[1]


def shared_file(relative: str) -> Path:
    """A licensed benchmark file from ../shared/data: skipped locally if absent, a failure in CI."""
    path = SHARED_DATA / relative
    if not path.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{path} is missing; CI must have ../shared beside the checkout")
        pytest.skip(f"{path} not available")
    return path


def make_project(root: Path, data: Path, **sections) -> Path:
    """A projects/<name>-style folder with the input linked into data/external and a params.yaml."""
    return scratch_project(root, data, sections)


def run_stage(stage: str, project: Path) -> int:
    return cli.main([stage, "--project", str(project)])


def set_params(project: Path, **sections) -> None:
    """Merge values into a project's params.yaml, section by section."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    (project / "params.yaml").write_text(yaml.safe_dump(merge(params, sections)))


def write_file(folder: Path, name: str, content: bytes | str) -> Path:
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def single_error(stderr: str) -> str:
    """The one `error: ...` line a failed command printed; a traceback or a second error fails."""
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


def written_files(project: Path) -> list[str]:
    """Every file the stages wrote under a project (its params.yaml, input and the stages' lock
    file excepted; empty folders do not count)."""
    return sorted(str(p.relative_to(project)) for p in project.rglob("*")
                  if not p.is_dir() and p.name != "params.yaml" and not p.name.startswith(".bert4rec")
                  and "external" not in p.relative_to(project).parts)
