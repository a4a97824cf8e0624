"""Locate the active project and load its parameters; shared by every stage's CLI."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from bert4rec.config import Params, load_params
from bert4rec.errors import UserError
from bert4rec.paths import ProjectPaths

ROOT_PARAMS = Path("params.yaml")


def stage_parser(stage: str, doc: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"bert4rec {stage}", description=doc)
    parser.add_argument(
        "--project",
        type=Path,
        help="project folder (projects/<name>); default: the one params.yaml points to",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )


def open_project(project: Path | None) -> tuple[ProjectPaths, Params]:
    """The project is projects/<name>/ and its parameters are projects/<name>/params.yaml.

    The root params.yaml is a link to the active project's file, so DVC (`dvc exp run -S`)
    and the stages read the same single file.
    """
    if project is None:
        if not ROOT_PARAMS.exists():
            raise UserError(
                "params.yaml: no active project; create one with "
                "`make project NAME=<name> DATA=<file>` or pass --project projects/<name>"
            )
        params_file = ROOT_PARAMS.resolve()
        paths = ProjectPaths(params_file.parent)
    else:
        if not project.is_dir():
            raise UserError(f"{project}: project folder not found")
        paths = ProjectPaths(project)
        params_file = paths.params
    return paths, load_params(params_file)
