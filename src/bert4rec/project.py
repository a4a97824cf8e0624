"""Locate the active project and load its parameters; shared by every stage's CLI."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from bert4rec.config import Params, load_params
from bert4rec.errors import UserError
from bert4rec.paths import ProjectPaths


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

    Without --project the active project is used (config/active_project, set by
    `make project` / `make use`); its params.yaml is a link to the root params.yaml, which DVC
    (`dvc exp run -S`) edits, so the stages and DVC read the same single file.
    """
    if project is None:
        from bert4rec import workspace

        paths = workspace.active_paths(Path.cwd())
    else:
        if not project.is_dir():
            raise UserError(f"{project}: project folder not found")
        paths = ProjectPaths(project)
    return paths, load_params(paths.params)


def stage_main(stage: str, doc: str, argv: list[str] | None) -> tuple[ProjectPaths, Params]:
    """What every stage's main() starts with: parse --project/-v, set up logging, open the project."""
    args = stage_parser(stage, doc).parse_args(argv)
    configure_logging(args.verbose)
    paths, params = open_project(args.project)
    from bert4rec import tracking

    tracking.warm_up(paths)
    return paths, params
