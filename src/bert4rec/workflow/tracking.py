"""The only module that talks to MLflow.

Without configuration runs go to a local sqlite store (`mlflow.db` at the repository root);
MLFLOW_TRACKING_URI (from the environment or `.env`) points them at a tracking server.
BERT4REC_TRACKING=off turns tracking off (unit tests). Everything here is a no-op outside an
open stage run, so library code can log unconditionally.

Layout in MLflow: one experiment per project; `make <stage>` opens a parent run (see
`start_parent`) and every stage DVC executes inside it is a child run (BERT4REC_PARENT_RUN_ID).
A sweep (`make sweep`) opens a parent run with one child per point; DVC's queue runs each point
in a temporary copy of the repository and tells its stages the experiment's name (DVC_EXP_NAME)
and the real repository (DVC_ROOT), so each stage run finds the store there and nests under its
point's run (tag dvc_exp_name). `make promote` registers a model as `bert4rec-<project>` with
the alias `champion`.
Each run is tagged with the project, stage, model name, git commit and dirty flag, the DVC
stage and the input's DVC hash (dataset lineage); the stage -> run id mapping is kept in
projects/<name>/config/config_mlflow.yaml, as the predecessor's users expect.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil
import yaml

from bert4rec import credentials
from bert4rec.errors import UserError
from bert4rec.fileio import atomic_file
from bert4rec.params import Params
from bert4rec.paths import ProjectPaths
from bert4rec.workflow import vcs

SWITCH = "BERT4REC_TRACKING"
PARENT_RUN = "BERT4REC_PARENT_RUN_ID"  # set by `bert4rec run` (the Makefile) around `dvc repro`
DVC_EXP_NAME = "DVC_EXP_NAME"  # set by DVC for the stages of `dvc exp run` (queued or not)
SWEEP_POINT = "sweep_point"  # kind of a sweep point's run
REGISTRY_ALIAS = "champion"
RUNS_FILE = Path("config") / "config_mlflow.yaml"

log = logging.getLogger("bert4rec.tracking")
_run = None
_warm_up: tuple[threading.Thread, dict] | None = None


def enabled() -> bool:
    return os.environ.get(SWITCH, "on").strip().lower() not in ("off", "0", "false", "no")


def repository_root(paths: ProjectPaths) -> Path:
    """The repository holding the project (nearest folder up with dvc.yaml or .git).

    A project outside any repository (`--project /tmp/x`) keeps its store in its own folder
    rather than writing mlflow.db into whatever folder happens to be two levels up.
    """
    project = paths.root.resolve()
    for folder in (project, *project.parents):
        if (folder / "dvc.yaml").exists() or (folder / ".git").exists():
            return folder
    return project


def load_env(root: Path) -> None:
    """Settings from `<root>/.env` (never overriding the real environment)."""
    from dotenv import load_dotenv
    from dotenv.parser import parse_stream

    path = root / ".env"
    if path.is_dir():
        raise UserError(f"{path}: is a folder; expected a file of KEY=value lines (see .env.example)")
    if not path.exists():
        return
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: byte {error.start + 1} is not UTF-8 text; save the file as UTF-8") from None
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:  # its text may hold a secret: only a leading setting name is shown
            original = binding.original.string
            line = binding.original.line + original[:len(original) - len(original.lstrip())].count("\n")
            name = re.match(r"\s*([A-Z_][A-Z0-9_]{0,60})(?![A-Za-z0-9_])", original)
            start = f" (starting {name.group(1)!r})" if name else ""
            raise UserError(f"{path}: line {line}{start} is not KEY=value; expected lines like "
                            "MLFLOW_TRACKING_URI=http://127.0.0.1:5000 (see .env.example)")
    load_dotenv(stream=io.StringIO(text), override=False)


def store_root(paths: ProjectPaths) -> Path:
    """Where the MLflow store (and `.env`) is: the repository DVC runs the stage for (DVC_ROOT;
    DVC's queue runs experiments in a temporary copy under .dvc/tmp/exps that is deleted after),
    else the repository holding the project."""
    dvc_root = os.environ.get("DVC_ROOT")
    if dvc_root and Path(dvc_root).is_dir():
        return Path(dvc_root).resolve()
    return repository_root(paths)


def tracking_uri(paths: ProjectPaths) -> str:
    return uri_for_root(store_root(paths))


def local_store(root: Path) -> str:
    """The embedded default: a sqlite file at the repository's root."""
    return f"sqlite:///{root.resolve() / 'mlflow.db'}"


def uri_for_root(root: Path) -> str:
    """The tracking URI, never with credentials in it: `http://user:password@host` hands them to
    MLflow's own MLFLOW_TRACKING_USERNAME/PASSWORD, so the URI can be shown and recorded."""
    load_env(root)
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return local_store(root)
    clean, user, password = credentials.split_credentials(uri)
    if user is not None:
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", user)
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", password or "")
        os.environ["MLFLOW_TRACKING_URI"] = clean
    return clean


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


def check_server(uri: str, timeout: float = 5.0) -> None:
    """A tracking server that does not answer is one clear error, not minutes of retries."""
    if not uri.startswith(("http://", "https://")):
        return
    request = urllib.request.Request(uri.rstrip("/") + "/health")
    user, token = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_TOKEN")
    if user:
        pair = f"{user}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(pair).decode())
    elif token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            pass
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            raise UserError(f"MLflow tracking server {uri} refused the credentials (HTTP {error.code} on /health); "
                            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) "
                            "in .env") from None
        if error.code >= 500:
            raise UserError(f"MLflow tracking server {uri} answered HTTP {error.code}") from None
        raise UserError(f"MLFLOW_TRACKING_URI {uri} does not answer as an MLflow tracking server (HTTP {error.code} "
                        "on /health); expected the server's address, e.g. http://127.0.0.1:5000") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise UserError(
            f"MLflow tracking server {uri} is unreachable ({reason}); start it, fix "
            "MLFLOW_TRACKING_URI in .env, or unset it to use the local mlflow.db"
        ) from None


_opened: set[str] = set()  # stores check_store found working in this process


def _quiet_mlflow() -> None:
    for name in ("mlflow", "alembic"):  # store migrations and start-up notices are not for users
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # retries: our warning says it once
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # "🏃 View run …" per run


def check_store(uri: str) -> None:
    """The tracking store works, checked before anything is committed: a server answers, or a
    database URI opens (a wrong scheme, a missing driver, a file that is not a database)."""
    if uri.startswith(("http://", "https://")):
        check_server(uri)
        return
    if uri in _opened:
        return
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme == "file" or (not scheme and not uri.startswith("databricks")):
        raise UserError(f"MLFLOW_TRACKING_URI {uri}: expected a tracking server (http://host:port) or a database "
                        "(sqlite:///path/mlflow.db, postgresql://…); MLflow's folder stores are not supported")
    folder = Path(uri.removeprefix("sqlite:///")).parent
    if scheme == "sqlite" and not folder.is_dir():
        raise UserError(f"MLFLOW_TRACKING_URI {uri}: the folder {folder} does not exist; create it or fix the path "
                        "(sqlite:////abs/path.db for an absolute path)")
    import mlflow

    _quiet_mlflow()
    try:
        mlflow.MlflowClient(uri).search_experiments(max_results=1)
    except Exception as error:  # MLflow, SQLAlchemy and import errors alike: the store is unusable
        detail = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        where = ("MLFLOW_TRACKING_URI (in .env or the environment)" if os.environ.get("MLFLOW_TRACKING_URI")
                 else "the local store (move the damaged mlflow.db aside to start a new one)")
        raise UserError(f"MLflow tracking store {uri} cannot be opened ({detail}); fix {where}, or set "
                        f"{SWITCH}=off to run without tracking") from None
    _opened.add(uri)


def _client(root: Path):
    for name, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")):
        os.environ.setdefault(name, value)  # a server gone mid-run is noticed in seconds, not minutes
    import mlflow

    _quiet_mlflow()
    uri = uri_for_root(root)
    check_store(uri)
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(uri)


def warm_up(paths: ProjectPaths) -> None:
    """Import MLflow and open its store in the background while the stage starts its work.

    Both cost ~3.5 s per stage with the local sqlite store, as much as a data stage's own work
    on ML-1M; stage_run waits for this and re-raises its error (e.g. an unreachable server).
    """
    global _warm_up
    if _warm_up is not None:  # a previous stage in this process never opened its run
        _warm_up[0].join()
        _warm_up = None
    if not enabled():
        return
    root, name, result = store_root(paths), experiment_name(paths), {}

    def connect():
        try:
            result[(root, name)] = _experiment_id(root, name)
        except BaseException as error:  # handed to the main thread by _warm_experiment_id
            result["error"] = error

    # not a daemon: a stage that fails early still lets a first store migration finish
    thread = threading.Thread(target=connect, name="mlflow-warm-up")
    thread.start()
    _warm_up = (thread, result)


def _warm_experiment_id(root: Path, name: str) -> str:
    global _warm_up
    if _warm_up is not None:
        thread, result = _warm_up
        _warm_up = None
        thread.join()
        if "error" in result:
            raise result["error"]
        if (root, name) in result:
            return result[(root, name)]
    return _experiment_id(root, name)


def _experiment_id(root: Path, name: str) -> str:
    """One experiment per project, created once; local stores keep artifacts in mlartifacts/."""
    client = _client(root)
    replay_pending(root, client)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        close_dead_runs(client, experiment.experiment_id)
        return experiment.experiment_id
    location = None
    if not uri_for_root(root).startswith(("http://", "https://")):
        location = (root.resolve() / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


# ---------------------------------------------------------------- runs left behind by killed processes

def process_tags() -> dict[str, str]:
    """Who owns a run: a later run on this host marks it KILLED once that process is gone."""
    return {"bert4rec_host": socket.gethostname(), "bert4rec_pid": str(os.getpid()),
            "bert4rec_process_start": f"{psutil.Process().create_time():.3f}"}


def _alive(tags: dict) -> bool:
    try:
        started = psutil.Process(int(tags["bert4rec_pid"])).create_time()
        return abs(started - float(tags["bert4rec_process_start"])) < 1.0  # not a reused pid
    except (psutil.Error, KeyError, ValueError):
        return False


def close_dead_runs(client, experiment_id: str) -> None:
    """Runs of this host still RUNNING although their process died (killed): marked KILLED."""
    host = socket.gethostname()
    running = client.search_runs([experiment_id], filter_string=f"attributes.status = 'RUNNING' and "
                                                                f"tags.bert4rec_host = '{host}'")
    for run in running:
        if not _alive(run.data.tags):
            client.set_terminated(run.info.run_id, status="KILLED")
            log.warning("MLflow run %s (%s, pid %s) was left RUNNING by a process that is gone; marked KILLED",
                        run.info.run_id, run.data.tags.get("mlflow.runName", "?"), run.data.tags.get("bert4rec_pid"))


def git_tags(root: Path) -> dict[str, str]:
    if not vcs.is_git_repo(root):
        return {"git_commit": "none", "git_dirty": "unknown"}
    return {"git_commit": vcs.head_commit(root) or "none", "git_dirty": str(vcs.is_dirty(root)).lower(),
            "mlflow.source.git.commit": vcs.head_commit(root) or "none"}


def dataset_pointer(paths: ProjectPaths, raw_input: str) -> Path:
    return paths.resolve_input(raw_input).with_name(Path(raw_input).name + ".dvc")


def _record_run(paths: ProjectPaths, stage: str, run, experiment: str, parent: str | None) -> None:
    """Keep the stage -> run id mapping inside the project (config/config_mlflow.yaml)."""
    path = paths.root / RUNS_FILE
    try:
        data = yaml.safe_load(path.read_text()) if path.exists() else {}
    except yaml.YAMLError:
        data = {}
    data = data or {}
    data["experiment_name"] = experiment
    data["experiment_id"] = run.info.experiment_id
    data["tracking_uri"] = uri_for_root(store_root(paths))
    data.setdefault("stages", {})[stage] = {
        "run_id": run.info.run_id,
        "parent_run_id": parent,
        "git_commit": run.data.tags.get("git_commit"),
    }
    with atomic_file(path) as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))


@contextlib.contextmanager
def stage_run(stage: str, paths: ProjectPaths, params: Params, sections: tuple[str, ...],
              model_name: str | None = None, record: bool = True) -> Iterator[None]:
    """One MLflow run for one stage execution: the stage's params sections flattened, tags,
    FAILED on error. A no-op with tracking off, or with record=False (a worker that is not the
    chief of several)."""
    if not enabled() or not record:
        yield
        return
    with _mlflow_run(stage, paths, params, sections, model_name):
        yield


@contextlib.contextmanager
def _mlflow_run(stage: str, paths: ProjectPaths, params: Params, sections: tuple[str, ...],
                model_name: str | None) -> Iterator[None]:
    global _run
    import mlflow

    root = store_root(paths)
    experiment = experiment_name(paths)
    experiment_id = _warm_experiment_id(root, experiment)
    exp_name = os.environ.get(DVC_EXP_NAME)
    pointer = dataset_pointer(paths, params.raw.input)
    dataset_hash = vcs.dvc_hash(pointer)
    run_tags = {
        "project": paths.name,
        "stage": stage,
        "dvc_stage": os.environ.get("DVC_STAGE", "none (run outside dvc repro)"),
        "experiment_name": experiment,
        "model_name": model_name or "none",
        "dataset_dvc_md5": dataset_hash or "untracked",
        **({"dvc_exp_name": exp_name} if exp_name else {}),
        **git_tags(repository_root(paths)),  # the commit the stage runs from (a queued experiment's copy)
    }
    logged = params.model_dump(mode="json", include=set(sections))
    if model_name:
        logged["model_name"] = model_name
    parent = os.environ.get(PARENT_RUN) or (_sweep_point(root, experiment_id, exp_name) if exp_name else None)
    run = mlflow.start_run(experiment_id=experiment_id, run_name=stage, parent_run_id=parent,
                           tags={**run_tags, **process_tags()})
    global _run_root
    _run, _run_root, status = run, root, "FAILED"
    try:
        mlflow.log_params({k: str(v)[:6000] for k, v in flatten(logged).items()})
        if dataset_hash:
            _log_dataset(paths, params.raw.input, dataset_hash, stage)
        _record_run(paths, stage, mlflow.get_run(run.info.run_id), experiment, parent)
        yield
        status = "FINISHED"
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM
        status = "KILLED"
        raise
    finally:
        _send({"kind": "end", "status": status}, lambda: mlflow.end_run(status))
        _run = None
        _close_journal()


def _log_dataset(paths: ProjectPaths, raw_input: str, dataset_hash: str, stage: str) -> None:
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    source = LocalArtifactDatasetSource(str(paths.resolve_input(raw_input)))
    mlflow.log_input(MetaDataset(source, name=Path(raw_input).name, digest=dataset_hash[:36]), context=stage)


def log_metrics(metrics: dict, step: int | None = None) -> None:
    if _run is None:
        return
    import mlflow

    numeric = {k: float(v) for k, v in flatten(metrics).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    entry = {"kind": "metrics", "metrics": numeric, "step": step, "timestamp": int(time.time() * 1000)}
    _send(entry, lambda: mlflow.log_metrics(numeric, step=step))


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    if _run is None:
        return
    import mlflow

    path = Path(path)
    call = (lambda: mlflow.log_artifacts(str(path), artifact_path)) if path.is_dir() else \
        (lambda: mlflow.log_artifact(str(path), artifact_path))
    _send({"kind": "artifact", "file": str(path), "artifact_path": artifact_path}, call)


def set_tags(tags: dict) -> None:
    if _run is None:
        return
    import mlflow

    tags = _strings(tags)
    _send({"kind": "tags", "tags": tags}, lambda: mlflow.set_tags(tags))


def log_params(params: dict) -> None:
    if _run is None:
        return
    import mlflow

    params = {k: str(v)[:6000] for k, v in params.items()}
    _send({"kind": "params", "params": params}, lambda: mlflow.log_params(params))


def current_run_id() -> str | None:
    """The open stage run's id (None with tracking off)."""
    return None if _run is None else _run.info.run_id


# ---------------------------------------------------------------- a parent model from MLflow

@contextlib.contextmanager
def registered_model(paths: ProjectPaths, uri: str) -> Iterator[tuple[Path, str | None]]:
    """A model logged by a train_val run (train_val.init_from: models:/<name>/<version>,
    models:/<name>@<alias>, models:/<model id>), downloaded to a temporary folder.

    Yields (its models/<name>-style folder, the id of the run that logged it). Read access
    only, so it works with tracking off too.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    root = repository_root(paths)
    store_uri = uri_for_root(root)
    client = _client(root)
    with tempfile.TemporaryDirectory(prefix="bert4rec-parent-") as tmp:
        try:
            run_id = _logging_run(client, uri)
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=store_uri))
        except (MlflowException, OSError) as error:
            reason = getattr(error, "message", str(error)).splitlines()[0]
            raise UserError(f"train_val.init_from '{uri}': cannot read it from the MLflow store {store_uri} "
                            f"({reason})") from None
        folder = local / "artifacts" / "model_dir"
        if not folder.is_dir():
            raise UserError(f"train_val.init_from '{uri}': not a model logged by a bert4rec train_val run "
                            "(no artifacts/model_dir)")
        yield folder, run_id


def _logging_run(client, uri: str) -> str | None:
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    found = get_model_name_and_version(client, uri)
    if len(found) == 1:  # models:/<model id>
        return client.get_logged_model(found[0]).source_run_id
    return client.get_model_version(*found).run_id


# ---------------------------------------------------------------- parent run (make <stage>)

def start_parent(root: Path, project: str, target: str, tags: dict) -> str | None:
    """Open the parent run of one `make <stage>` call; returns its id (None if tracking is off).
    Its process owns it: killed, it is marked KILLED by the next run on this host."""
    if not enabled():
        return None
    return _open_run(_client(root), root, project, f"make {target}",
                     {"stage": target, "kind": "pipeline", **process_tags(), **tags})


def _open_run(client, root: Path, project: str, run_name: str, tags: dict, params: dict | None = None) -> str:
    """A top-level run in the project's experiment with the git state, tags and params."""
    from mlflow.entities import Param

    experiment = f"bert4rec-{project}"
    run = client.create_run(_experiment_id(root, experiment), run_name=run_name, tags={
        "project": project, "experiment_name": experiment, **git_tags(root), **_strings(tags)})
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in _strings(params or {}).items()])
    return run.info.run_id


def _strings(values: dict) -> dict[str, str]:
    return {key: str(value) for key, value in values.items()}


def finish_parent(root: Path, run_id: str | None, status: str, tags: dict) -> list[str] | None:
    """Close the parent run (FINISHED, FAILED or KILLED); the commit holding the new dvc.lock is
    tagged on it and its children. With the server gone, this is kept for later (.mlflow-pending)
    and None is returned."""
    if run_id is None:
        return []
    from mlflow.entities import RunTag

    tags = _strings(tags)
    try:
        client = _client(root)
        children = _children(client, run_id)
        for rid in [run_id, *children]:
            client.log_batch(rid, tags=[RunTag(key, value) for key, value in tags.items()])
        client.set_terminated(run_id, status=status)
        return children
    except Exception as error:  # MLflow wraps connection errors in its own exception types
        if not (isinstance(error, UserError) or _unreachable(error)):
            raise
        folder = root / PENDING / run_id
        _append_journal(folder, {"kind": "family_tags", "tags": tags}, {"kind": "end", "status": status})
        log.warning("MLflow tracking server unreachable while closing run %s; kept in %s for the next command "
                    "that reaches it (or `bert4rec sync`)", run_id, folder)
        return None


def _children(client, run_id: str) -> list[str]:
    experiment = client.get_run(run_id).info.experiment_id
    runs = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    return [r.info.run_id for r in runs]


# ---------------------------------------------------------------- sweeps (make sweep)

def _sweep_point(root: Path, experiment_id: str, exp_name: str) -> str | None:
    """The run of the sweep point that queued DVC experiment `exp_name` (None outside a sweep)."""
    client = _client(root)
    runs = client.search_runs([experiment_id], max_results=1, filter_string=(
        f"tags.kind = '{SWEEP_POINT}' and tags.dvc_exp_name = '{exp_name}'"))
    return runs[0].info.run_id if runs else None


def start_sweep(root: Path, project: str, sweep_id: str, fixed: dict, tags: dict) -> str | None:
    """The parent run of one sweep; the values every point shares are its params. No process
    owns it: a sweep stopped and resumed later closes the same run."""
    if not enabled():
        return None
    return _open_run(_client(root), root, project, f"sweep {sweep_id}", {"kind": "sweep", "sweep": sweep_id, **tags},
                     fixed)


def start_point(root: Path, parent: str | None, exp_name: str, varied: dict) -> str | None:
    """A child of the sweep's run for one point (DVC experiment `exp_name`), its varied keys as
    params; the point's stage runs nest under it (see _sweep_point)."""
    if parent is None:
        return None
    from mlflow.entities import Param

    client = _client(root)
    sweep = client.get_run(parent)
    run = client.create_run(sweep.info.experiment_id, run_name=exp_name, tags={
        "mlflow.parentRunId": parent, "kind": SWEEP_POINT, "dvc_exp_name": exp_name,
        "sweep": sweep.data.tags.get("sweep", ""), "project": sweep.data.tags.get("project", "")})
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in _strings(varied).items()])
    return run.info.run_id


def _status(client, run_id: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.status
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise UserError(f"run {run_id} is not in the tracking store {client.tracking_uri} (tracked in another "
                            "store: set MLFLOW_TRACKING_URI as it was)") from None
        raise


def is_running(root: Path, run_id: str | None) -> bool:
    return run_id is not None and enabled() and _status(_client(root), run_id) == "RUNNING"


def finish_run(root: Path, run_id: str | None, ok: bool, metrics: dict[str, float]) -> None:
    """Log a sweep's or a point's results and close its run (a run already closed is left alone)."""
    if run_id is None or not enabled():
        return
    from mlflow.entities import Metric

    client = _client(root)
    if _status(client, run_id) != "RUNNING":
        return
    stamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, float(value), stamp, 0) for key, value in metrics.items()])
    client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")


# ---------------------------------------------------------------- the registry (make promote)

@dataclass
class Champion:
    registered_model: str  # bert4rec-<project>
    version: str
    previous: str | None  # the version the alias pointed at before (it keeps its number)
    source: str  # the logged model registered (models:/m-...)
    run_id: str  # the run that logged it

    @property
    def uri(self) -> str:
        return f"models:/{self.registered_model}@{REGISTRY_ALIAS}"


def _logged_model(root: Path, experiment_id: str, exp_name: str, model_dir: Path) -> tuple[str, str]:
    """(model URI, run id): the one the experiment's train_val run logged, else logged now from
    the workspace's model folder (the sweep ran with tracking off) in a run named after it."""
    import mlflow

    client = _client(root)
    runs = client.search_runs([experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
                              filter_string=f"tags.dvc_exp_name = '{exp_name}' and tags.stage = 'train_val'")
    if runs and runs[0].data.tags.get("model_uri"):
        return runs[0].data.tags["model_uri"], runs[0].info.run_id
    global _run, _run_root
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"promote {exp_name}",
                          tags={"kind": "promote", "dvc_exp_name": exp_name, **git_tags(root), **process_tags()}) as run:
        _run, _run_root = run, root
        try:
            log_model(model_dir)
        finally:
            _run = None
            _close_journal()
    uri = client.get_run(run.info.run_id).data.tags.get("model_uri")
    if uri is None:
        raise UserError(f"MLflow run {run.info.run_id}: logging the model of {model_dir} did not finish; "
                        "`bert4rec sync` sends it once the tracking server answers, then promote again")
    return uri, run.info.run_id


def register_champion(root: Path, project: str, exp_name: str, model_dir: Path, tags: dict) -> Champion:
    """Register experiment `exp_name`'s model as a new version of `bert4rec-<project>` and point
    the alias `champion` at it; earlier versions stay in the registry."""
    from mlflow.exceptions import MlflowException

    client = _client(root)
    name = f"bert4rec-{project}"
    source, run_id = _logged_model(root, _experiment_id(root, name), exp_name, model_dir)
    try:
        previous = client.get_model_version_by_alias(name, REGISTRY_ALIAS).version
    except MlflowException:  # no registered model or no alias yet
        previous = None
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name, tags={"project": project})
    model_id = source.split("/", 1)[1] if source.startswith("models:/m-") else None
    version = client.create_model_version(name, source, run_id=run_id, model_id=model_id,
                                          tags=_strings({"dvc_exp_name": exp_name, **tags}))
    client.set_registered_model_alias(name, REGISTRY_ALIAS, version.version)
    return Champion(name, str(version.version), None if previous is None else str(previous), source, run_id)


# ---------------------------------------------------------------- the model, loadable from MLflow

def _pyfunc_class():
    """MLflow's adapter around bert4rec.model.pyfunc.HistoryRecommender, built on demand so
    importing this module stays cheap; it is loaded in a serving process, which imports the
    (TensorFlow) recommender only then."""
    import mlflow.pyfunc

    class Bert4RecPyfunc(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            from bert4rec.model.pyfunc import HistoryRecommender

            self.recommender = HistoryRecommender(Path(context.artifacts["model_dir"]))

        def predict(self, context, model_input, params=None):
            return self.recommender.predict(model_input, (params or {}).get("k"))

    return Bert4RecPyfunc


NOT_SERVED = shutil.ignore_patterns("checkpoints", "ckpt-*", "tensorboard", "logs")  # left out of a logged model


def log_model(model_dir: str | Path, name: str = "model") -> None:
    """Log models/<name>/ (without resumable checkpoints) as a pyfunc that loads back from MLflow."""
    if _run is not None:
        _send({"kind": "model", "folder": str(Path(model_dir).resolve()), "name": name},
              lambda: _log_pyfunc(Path(model_dir), name))


def _pyfunc_signature():
    """No input schema (a column of id lists of any length); `k` as a param, which MLflow passes
    on only when the signature declares it (its default: pyfunc.DEFAULT_K)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    return ModelSignature(inputs=None, outputs=None, params=ParamSchema([ParamSpec("k", "long", 10)]))


def _log_pyfunc(model_dir: Path, name: str) -> None:
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no type hints on predict: the input is a DataFrame of histories
        warnings.showwarning = lambda *args, **kwargs: None  # MLflow re-enables its notice ("once") inside
        logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)  # the cloudpickle notice; the class is ours
        copy = Path(tmp) / "model_dir"
        shutil.copytree(model_dir, copy, ignore=NOT_SERVED)
        info = mlflow.pyfunc.log_model(name=name, python_model=_pyfunc_class()(), signature=_pyfunc_signature(),
                                       artifacts={"model_dir": str(copy)}, pip_requirements=[])
    mlflow.set_tag("model_uri", info.model_uri)


# ---------------------------------------------------------------- a tracking server that stops mid-run
#
# When the server stops answering during a stage, the stage carries on (its outputs are what
# matters); everything it would still have sent is kept in .mlflow-pending/<run id>/ at the
# repository root and sent by the next command that reaches the server (any stage, `make
# <stage>`, or `bert4rec sync`). A run whose journal never got its end is then marked KILLED.

PENDING = Path(".mlflow-pending")
UNSENT = Path(".mlflow-unsent")  # journals the server refused or that could not be read
_journal: Path | None = None
_run_root = Path(".")  # the repository of the open run


def _unreachable(error: Exception) -> bool:
    """A connection problem (worth keeping the call for later), not a refused request."""
    import requests

    if isinstance(error, (requests.exceptions.RequestException, ConnectionError, TimeoutError)):
        return True
    text = str(error)
    return any(word in text for word in ("Max retries exceeded", "Connection refused", "ConnectionError",
                                         "Failed to establish", "timed out", "RemoteDisconnected"))


def _send(entry: dict, call) -> None:
    """Make an MLflow call; once the server has stopped answering, journal the entry instead."""
    global _journal
    if _journal is None:
        try:
            call()
            return
        except Exception as error:  # MLflow wraps connection errors in its own exception types
            if not _unreachable(error):
                raise
            _journal = _open_journal(error)
    if entry["kind"] == "artifact":
        entry = {**entry, "file": _keep_copy(Path(entry["file"]))}
    elif entry["kind"] == "model":  # a sweep point's folder is gone once DVC has collected its outputs
        entry = {**entry, "folder": _keep_copy(Path(entry["folder"]), NOT_SERVED)}
    _append_journal(_journal, entry)


def _append_journal(folder: Path, *entries: dict) -> None:
    """What a run could not send, one JSON line per call, replayed in order by replay_pending."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "journal.jsonl", "a") as handle:
        handle.writelines(json.dumps(entry) + "\n" for entry in entries)


def _open_journal(error: Exception) -> Path:
    folder = _run_root / PENDING / _run.info.run_id
    (folder / "files").mkdir(parents=True, exist_ok=True)
    log.warning("MLflow tracking server stopped answering (%s); the stage goes on and keeps its outputs; what "
                "it would have sent is kept in %s and sent by the next command that reaches the server "
                "(or `bert4rec sync`)", str(error).splitlines()[0][:200], folder)
    return folder


def _keep_copy(path: Path, ignore=None) -> str:
    """Artifacts and models are copied at once: the stage may overwrite or remove them before the
    replay. Each in a numbered folder of its own, so it is sent under its own name."""
    target = _journal / "files" / f"{len(list((_journal / 'files').iterdir())):04d}" / path.name
    target.parent.mkdir(parents=True)
    if path.is_dir():
        shutil.copytree(path, target, ignore=ignore)
    else:
        shutil.copy2(path, target)
    return str(target)


def _close_journal() -> None:
    global _journal
    _journal = None


def sync(root: Path) -> int:
    """`bert4rec sync`: send what runs missed while the tracking server was down (with nothing
    kept, no store is opened: run elsewhere, it would leave an empty mlflow.db behind)."""
    return replay_pending(root, _client(root)) if enabled() and pending_runs(root) else 0


def pending_runs(root: Path) -> list[Path]:
    return sorted((root / PENDING).iterdir()) if (root / PENDING).is_dir() else []


def replay_pending(root: Path, client) -> int:
    """Send every journaled run's entries to the server; returns how many runs were completed.
    A journal the server refuses or that cannot be read is moved to .mlflow-unsent/ with a
    warning naming it: it never stops a stage."""
    done = 0
    for folder in pending_runs(root):
        try:
            _replay(client, folder, _journal_entries(folder))
        except Exception as error:  # MLflow refusing an entry (a run deleted, a bad status), a damaged journal
            if _unreachable(error):
                raise
            _set_aside(root, folder, error)
            continue
        shutil.rmtree(folder)
        log.info("sent what MLflow run %s missed while the tracking server was down", folder.name)
        done += 1
    with contextlib.suppress(OSError):  # nothing left to send: no empty folder behind
        (root / PENDING).rmdir()
    return done


class BadJournal(Exception):
    """A journal in .mlflow-pending that is not what _append_journal writes."""


ENTRY_KINDS = ("metrics", "tags", "family_tags", "params", "artifact", "model", "end")


def _journal_entries(folder: Path) -> list[dict]:
    """The journal's entries; a last line cut short (the process killed while appending) is dropped."""
    journal = folder / "journal.jsonl"
    if not journal.is_file():
        raise BadJournal(f"{journal} is missing")
    lines = journal.read_text(errors="replace").splitlines()
    entries = []
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                log.warning("%s: line %d is cut short (its process was killed while writing it); left out",
                            journal, number)
                break
            raise BadJournal(f"{journal}: line {number} is not JSON") from None
        if not isinstance(entry, dict) or entry.get("kind") not in ENTRY_KINDS:
            raise BadJournal(f"{journal}: line {number} is not a journal entry (kind one of {', '.join(ENTRY_KINDS)})")
        entries.append(entry)
    return entries


def _set_aside(root: Path, folder: Path, error: Exception) -> None:
    target = root / UNSENT / folder.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target = target.with_name(f"{folder.name}.{int(time.time())}")
    shutil.move(str(folder), str(target))
    detail = " ".join(str(error).split())[:300]
    log.warning("MLflow run %s: what it kept while the server was down cannot be sent (%s); moved to %s",
                folder.name, detail, target)


def _replay(client, folder: Path, entries: list[dict]) -> None:
    """Send the entries in order; `sent` in the folder counts those already sent, so a replay cut
    off by an outage goes on where it stopped instead of sending metrics twice."""
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    run_id, progress = folder.name, folder / "sent"
    done = int(progress.read_text()) if progress.is_file() and progress.read_text().strip().isdigit() else 0
    status = "KILLED"  # no end in the journal: the process died before the stage finished
    for index, entry in enumerate(entries):
        kind = entry["kind"]
        if kind == "end":
            status = entry["status"]
        if index < done:
            continue
        if kind == "metrics":
            client.log_batch(run_id, metrics=[Metric(k, v, entry["timestamp"], entry["step"] or 0)
                                              for k, v in entry["metrics"].items()])
        elif kind in ("tags", "family_tags"):  # family: the run and its children (a `make` parent run)
            for rid in [run_id, *(_children(client, run_id) if kind == "family_tags" else [])]:
                client.log_batch(rid, tags=[RunTag(k, v) for k, v in entry["tags"].items()])
        elif kind == "params":
            client.log_batch(run_id, params=[Param(k, v) for k, v in entry["params"].items()])
        elif kind == "artifact":
            path = Path(entry["file"])
            (client.log_artifacts if path.is_dir() else client.log_artifact)(run_id, str(path), entry["artifact_path"])
        elif kind == "model" and not Path(entry["folder"]).is_dir():
            log.warning("MLflow run %s: its model folder %s is gone (kept by an older version, which did not "
                        "copy it); the run is sent without its model", run_id, entry["folder"])
        elif kind == "model":  # mlflow.start_run opens the run in the client's store, not another one set earlier
            previous = mlflow.get_tracking_uri()
            mlflow.set_tracking_uri(client.tracking_uri)
            try:
                with mlflow.start_run(run_id=run_id):
                    _log_pyfunc(Path(entry["folder"]), entry["name"])
            finally:
                mlflow.set_tracking_uri(previous)
        progress.write_text(str(index + 1))
    client.set_terminated(run_id, status=status)
