"""`make <stage>`: git commit + push, an MLflow parent run, `dvc repro <stage>`, commit dvc.lock, dvc push.

The order fixes the predecessor's defect: the new dvc.lock is committed after the stage ran,
so the commit recorded on the MLflow runs (tag git_commit_outputs) holds the outputs' hashes.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

from bert4rec.arguments import port
from bert4rec.errors import UserError
from bert4rec.workflow import dvcyaml, projects, tracking, vcs

STAGES = ("raw", "tfrecord", "train_val", "test", "inference")


def say(message: str) -> None:
    print(f"[bert4rec] {message}", flush=True)


def run_stage(root: Path, stage: str, force: bool = False) -> int:
    if stage not in STAGES:
        raise UserError(f"unknown stage '{stage}'; stages: {', '.join(STAGES)}")
    vcs.require_repo(root)
    vcs.hold_repository(root, f"`make {stage}`")
    name, params = projects.load_active(root)  # unknown project / invalid params fail here
    tracking.load_env(root)
    if tracking.enabled():
        tracking.check_store(tracking.uri_for_root(root))
    say(vcs.configure_remotes(root))
    params = projects.render_pipeline(root, name, params)
    rendered = dvcyaml.render(f"projects/{name}", params, dvcyaml.load_template(root), root)
    if stage not in rendered["stages"]:
        raise UserError(f"stage '{stage}' is not part of project {name}'s pipeline for raw.task={params.raw.task}")

    before = vcs.commit(root, f"{name}: code/params/pipeline before `dvc repro {stage}`")
    say(f"git: committed {before[:10]}" if before else "git: nothing to commit before the stage")
    say(vcs.push(root))
    commit, dirty = vcs.head_commit(root), vcs.is_dirty(root)
    parent = tracking.start_parent(root, name, stage, {"git_commit": commit, "git_dirty": str(dirty).lower()})
    env = dict(os.environ)
    if parent:
        env[tracking.PARENT_RUN] = parent
        say(f"mlflow: parent run {parent} in experiment bert4rec-{name} ({tracking.uri_for_root(root)})")
    try:
        code = vcs.repro(root, stage, force, env)
    except KeyboardInterrupt:
        say(vcs.restore_outputs(root, f"projects/{name}"))
        tracking.finish_parent(root, parent, "KILLED", tags={"stopped_by": "signal"})
        raise
    if code != 0:
        say(vcs.restore_outputs(root, f"projects/{name}"))
        tracking.finish_parent(root, parent, "FAILED", tags={"dvc_repro_exit": code})
        raise UserError(f"`dvc repro {stage}` failed (exit {code}); see the messages above. dvc.lock was not "
                        "committed")
    after = vcs.commit(root, f"{name}: dvc.lock after `dvc repro {stage}`")
    say(f"git: committed dvc.lock in {after[:10]}" if after else "git: dvc.lock unchanged (stages were up to date)")
    say(vcs.push(root))
    outputs_commit = vcs.head_commit(root)
    children = tracking.finish_parent(
        root, parent, "FINISHED", tags={"git_commit_outputs": outputs_commit, "git_dirty_after": str(vcs.is_dirty(root)).lower()}
    )
    if parent and children is not None:
        say(f"mlflow: {len(children)} stage run(s) recorded under {parent}")
    say(vcs.dvc_push(root))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bert4rec run", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("-f", "--force", action="store_true", help="re-run the stage even if it is up to date")
    args = parser.parse_args(argv)
    return run_stage(Path.cwd(), args.stage, args.force)


def main_ui(argv: list[str] | None = None) -> int:
    """Serve the MLflow UI for the local store on 127.0.0.1 (or say where the server is)."""
    parser = argparse.ArgumentParser(prog="bert4rec ui", description="MLflow UI on 127.0.0.1")
    parser.add_argument("--port", type=port, default=5000)
    args = parser.parse_args(argv)
    root = Path.cwd()
    uri = tracking.uri_for_root(root)
    if uri.startswith(("http://", "https://")):
        tracking.check_store(uri)
        print(f"runs are on the tracking server: open {uri}")
        return 0
    if uri == tracking.local_store(root) and not (root / "mlflow.db").exists() and not (root / ".git").exists():
        raise UserError(f"{root}: no MLflow store here (mlflow.db) and not a repository's root; run `make ui` "
                        "from the repository's root")
    require_free_port(args.port)
    tracking.check_store(uri)
    print(f"MLflow UI on http://127.0.0.1:{args.port} (store {uri}); Ctrl-C stops it")
    command = [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", uri,
               "--default-artifact-root", (root / "mlartifacts").as_uri(),
               "--host", "127.0.0.1", "--port", str(args.port), "--workers", "1"]
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 0


def require_free_port(number: int) -> None:
    """`mlflow ui` on a port in use logs the error among its start-up lines and exits 0."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
        try:
            probe.bind(("127.0.0.1", number))
        except OSError as error:
            raise UserError(f"127.0.0.1:{number}: cannot serve the MLflow UI there ({error.strerror}); choose "
                            "another port: make ui PORT=<n> (bert4rec ui --port <n>)") from None


def main_sync(argv: list[str] | None = None) -> int:
    """Send to the tracking server what stage runs kept while it was down (.mlflow-pending/)."""
    argparse.ArgumentParser(prog="bert4rec sync", description=main_sync.__doc__).parse_args(argv)
    root = Path.cwd()
    kept = tracking.pending_runs(root)
    if kept and not tracking.enabled():
        raise UserError(f"tracking is off ({tracking.SWITCH}=off): the {len(kept)} run(s) kept in "
                        f"{tracking.PENDING}/ are sent once it is on")
    sent = tracking.sync(root)
    print(f"sent {sent} run(s) kept while the tracking server was down" if sent else "nothing pending")
    return 0
