"""What every stage's main() starts with: parse --project/-v, set up logging, open the project."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bert4rec.errors import UserError
from bert4rec.fileio import hold_lock
from bert4rec.params import Params, load_params
from bert4rec.paths import ProjectPaths
from bert4rec.workflow import projects, tracking


def stage_parser(stage: str, doc: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"bert4rec {stage}", description=doc)
    parser.add_argument("--project", type=Path,
                        help="project folder (projects/<name>); default: the active project")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    for noisy in ("tensorflow", "absl", "h5py", "matplotlib", "alembic", "urllib3", "git"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


def open_project(project: Path | None) -> tuple[ProjectPaths, Params]:
    """The project folder and its parameters (projects/<name>/params.yaml).

    Without --project the active project is used (config/active_project, set by
    `make project` / `make use`); its params.yaml is a link to the root params.yaml, which DVC
    (`dvc exp run -S`) edits, so the stages and DVC read the same single file.
    """
    if project is None:
        paths = projects.active_paths(Path.cwd())
    else:
        if not project.is_dir():
            named = Path("projects") / project
            hint = f"; did you mean --project {named}?" if named.is_dir() and len(project.parts) == 1 else \
                " (expected a project folder, e.g. projects/<name>; without --project: the active project)"
            raise UserError(f"{project}: project folder not found{hint}")
        paths = ProjectPaths(project)
    return paths, load_params(paths.params)


def stage_main(stage: str, doc: str, argv: list[str] | None) -> tuple[ProjectPaths, Params]:
    """Parse --project/-v, set up logging, open the project and lock it for this stage: a second
    stage on the same project (two `bert4rec train_val`, say) stops at once."""
    args = stage_parser(stage, doc).parse_args(argv)
    configure_logging(args.verbose)
    paths, params = open_project(args.project)
    worker = os.environ.get("TF_CONFIG") and cluster_index()
    lock = paths.root / (f".bert4rec-worker-{worker}.lock" if worker else ".bert4rec.lock")
    hold_lock(lock, f"`bert4rec {stage}`", f"project {paths.root} is busy")
    tracking.warm_up(paths)
    return paths, params


def cluster_index() -> str:
    """This process's task in TF_CONFIG (workers of a cluster on one machine share a project)."""
    try:
        task = json.loads(os.environ["TF_CONFIG"])["task"]
        return f"{task['type']}-{task['index']}"
    except (ValueError, KeyError, TypeError):
        return "unknown"


def user_ids(paths: ProjectPaths) -> pa.Array:
    """Original user ids by user index (references/users.parquet, written by the raw stage)."""
    if not paths.user_map.exists():
        raise UserError(f"{paths.user_map}: user id dictionary not found; run the raw stage")
    table = pq.read_table(paths.user_map)
    order = table.column("user_index").to_numpy()
    ids = table.column("user_id").combine_chunks()
    return ids if (order == np.arange(len(order))).all() else ids.take(pa.array(np.argsort(order)))
