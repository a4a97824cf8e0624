"""The only module that talks to MLflow.

Without configuration runs go to a local sqlite store (`mlflow.db` at the repository root);
MLFLOW_TRACKING_URI (from the environment or `.env`) points them at a tracking server.
BERT4REC_TRACKING=off turns tracking off (unit tests). Everything here is a no-op outside an
open stage run, so library code can log unconditionally.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from bert4rec.paths import ProjectPaths

SWITCH = "BERT4REC_TRACKING"
PARENT_RUN = "BERT4REC_PARENT_RUN_ID"  # set by the Makefile around a `make <stage>` call

_run = None


def enabled() -> bool:
    return os.environ.get(SWITCH, "on").strip().lower() not in ("off", "0", "false", "no")


def repository_root(paths: ProjectPaths) -> Path:
    return paths.root.resolve().parent.parent  # projects/<name> -> repository


def tracking_uri(paths: ProjectPaths) -> str:
    from dotenv import load_dotenv

    load_dotenv(repository_root(paths) / ".env", override=False)
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repository_root(paths) / 'mlflow.db'}"


def experiment_name(paths: ProjectPaths) -> str:
    return f"bert4rec-{paths.name}"


def flatten(data: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


@contextlib.contextmanager
def stage_run(stage: str, paths: ProjectPaths, params: dict, tags: dict | None = None) -> Iterator[None]:
    """One MLflow run for one stage execution: params flattened, tags, FAILED on error."""
    global _run
    if not enabled():
        yield
        return
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(paths))
    mlflow.set_experiment(experiment_name(paths))
    run_tags = {"project": paths.name, "stage": stage, **(tags or {})}
    parent = os.environ.get(PARENT_RUN) or None
    with mlflow.start_run(run_name=stage, parent_run_id=parent, tags=run_tags) as run:
        _run = run
        try:
            mlflow.log_params(flatten(params))
            yield
        finally:
            _run = None


def log_metrics(metrics: dict, step: int | None = None) -> None:
    if _run is None:
        return
    import mlflow

    numeric = {k: float(v) for k, v in flatten(metrics).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    mlflow.log_metrics(numeric, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    if _run is None:
        return
    import mlflow

    path = Path(path)
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path)
    else:
        mlflow.log_artifact(str(path), artifact_path)


def set_tags(tags: dict) -> None:
    if _run is None:
        return
    import mlflow

    mlflow.set_tags(tags)
