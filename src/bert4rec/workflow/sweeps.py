"""`make sweep SWEEP=<name>`: one DVC experiment per point of config/sweeps/<name>.yaml, run by
DVC's queue and tracked in MLflow; `make compare` shows a sweep side by side.

Each point is `dvc exp run --queue --name <sweep id>-p<i> -S key=value ...` of the whole
pipeline, so `dvc exp show` lists it and `dvc exp apply` restores it (params, dvc.lock and every
output). `dvc queue start --jobs <workers>` runs the queue: DVC runs each experiment in a
temporary copy of the repository (.dvc/tmp/exps/tmpXXXX) with the worker's environment plus
DVC_EXP_NAME and DVC_ROOT, from which the stages find the MLflow store and their point's run.
MLflow: one parent run per sweep and a child per point (its varied keys as params; validation
and test NDCG@10/HR@10 and training time as metrics) holding that point's stage runs.

A sweep's record, projects/<p>/results/sweeps/<id>.json (git-ignored, so `dvc exp apply` never
touches it), names its points; `make compare` and `make promote` read the newest one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from bert4rec.arguments import at_least_one
from bert4rec.errors import UserError
from bert4rec.fileio import read_typed, write_typed
from bert4rec.params import Params
from bert4rec.workflow import dvcyaml, projects, sweepfile, tracking, vcs
from bert4rec.workflow.comparison import BASELINE, Row, Scores, ordered, table, write_csv
from bert4rec.workflow.make import say

RECORDS = Path("results") / "sweeps"
POLL_SECONDS = 2.0
IDLE_POLLS = 30  # about a minute with points still queued and no worker alive: the workers are gone
EXIT_POLLS = 20  # idle DVC queue workers exit ~10 s after the queue empties
log = logging.getLogger("bert4rec.sweep")


class PointRecord(sweepfile.Strict):
    name: str  # the DVC experiment
    params: dict[str, sweepfile.Scalar]
    mlflow_run_id: str | None = None


class SweepRecord(sweepfile.Strict):
    id: str
    sweep: str
    file: str
    project: str
    model_name: str
    baseline: str  # the commit the experiments were queued from
    created: str
    varied: list[str]
    fixed: dict[str, sweepfile.Scalar]
    points: list[PointRecord]
    mlflow_run_id: str | None = None


class TrainingSummary(BaseModel):
    """What a sweep reads from models/<name>/model.json (the rest is the model's business)."""

    model_config = ConfigDict(extra="ignore")

    valid: dict[str, float] | None = None
    training_seconds: float | None = None


def records_dir(root: Path, project: str) -> Path:
    return root / "projects" / project / RECORDS


def load_record(root: Path, project: str, sweep_id: str | None = None) -> SweepRecord:
    """A sweep's record; without an id the newest of the project."""
    folder = records_dir(root, project)
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if sweep_id is not None:
        path = folder / f"{sweep_id}.json"
        if not path.exists():
            known = ", ".join(p.stem for p in paths) or "none yet"
            raise UserError(f"{path.relative_to(root)}: no sweep '{sweep_id}' in project {project}; sweeps: {known}")
        return read_typed(path, SweepRecord, "sweep record")
    records = readable_records(root, project)
    if not records:
        raise UserError(f"project {project} has no sweep yet ({folder.relative_to(root)}/ holds no readable record): "
                        "run `make sweep SWEEP=<name>`")
    return max(records, key=lambda r: r.created)


def readable_records(root: Path, project: str) -> list[SweepRecord]:
    """Every sweep record of the project; a damaged one is a warning (it must not hide the others)."""
    folder = records_dir(root, project)
    records = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            records.append(read_typed(path, SweepRecord, "sweep record"))
        except UserError as error:
            log.warning("skipped: %s", error)
    return records


def _new_id(root: Path, project: str, name: str) -> str:
    taken = set(vcs.experiments(root))
    number = 1
    while (records_dir(root, project) / f"{name}-{number}.json").exists() or \
            any(exp.startswith(f"{name}-{number}-") for exp in taken):
        number += 1
    return f"{name}-{number}"


def _read_json(root: Path, rev: str, path: str) -> dict:
    text = vcs.read_at(root, rev, path)
    if text is None:
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise UserError(f"{path} (commit {rev[:10]}): not valid JSON") from None


def experiment_row(root: Path, project: str, model_name: str, experiment: vcs.Experiment,
                   params: dict | None = None) -> tuple[Row, dict]:
    """A finished experiment's row (validation metrics and training time from its model.json, test
    metrics from its test_metrics.json) and its whole test report (the baselines are in it)."""
    model, results = f"projects/{project}/models/{model_name}", f"projects/{project}/results/{model_name}"
    summary = TrainingSummary.model_validate(_read_json(root, experiment.rev, f"{model}/model.json"))
    report = _read_json(root, experiment.rev, f"{results}/test_metrics.json")
    row = Row(experiment.name, "done", params or {}, Scores.of(summary.valid), Scores.of(report), summary.training_seconds)
    return row, report


def outcomes(root: Path, record: SweepRecord) -> tuple[list[Row], list[Row]]:
    """(one row per point in the sweep's order, the baselines' rows) from the DVC experiments."""
    found, statuses = vcs.experiments(root), None
    rows, reports = [], {}
    for point in record.points:
        experiment = found.get(point.name)
        if experiment is None:
            statuses = statuses if statuses is not None else vcs.queue_status(root)[0]
            status = {"Queued": "queued", "Running": "running"}.get(statuses.get(point.name, ""), "failed")
            rows.append(Row(point.name, status, point.params))
            continue
        row, reports[point.name] = experiment_row(root, record.project, record.model_name, experiment, point.params)
        rows.append(row)
    best = next((r for r in ordered(rows) if r.valid), None)
    report = reports.get(best.name, {}) if best else {}
    baselines = [Row(name, BASELINE, test=Scores.of(value)) for name, value in report.items()  # most_popular, item_to_item
                 if isinstance(value, dict) and Scores.of(value)]
    return rows, baselines


def close_runs(root: Path, record: SweepRecord, rows: list[Row]) -> None:
    """finish_tracking, and earlier sweeps' runs left open (their waiting was stopped) closed once
    their points are done. The table comes from DVC: a tracking store that is down or holds
    other runs is a warning, not a failure."""
    try:
        finish_tracking(root, record, rows)
        for earlier in readable_records(root, record.project):
            if earlier.id != record.id and tracking.is_running(root, earlier.mlflow_run_id):
                finish_tracking(root, earlier, outcomes(root, earlier)[0])
    except Exception as error:  # MLflow's own errors too (a run deleted in the UI, a server gone mid-call)
        detail = " ".join(str(error).split())[:300]
        log.warning("MLflow runs of sweep %s not updated: %s", record.id, detail)


def finish_tracking(root: Path, record: SweepRecord, rows: list[Row]) -> None:
    """Each finished point's metrics on its MLflow run, then the sweep's run closed (once all are)."""
    for point, row in zip(record.points, rows):
        if row.status in ("done", "failed"):
            metrics = {k: v for k, v in row.values().items() if v is not None}
            tracking.finish_run(root, point.mlflow_run_id, row.status == "done", metrics)
    if all(row.status in ("done", "failed") for row in rows):
        best = next((r for r in ordered(rows) if r.valid), None)
        summary = {"points": len(rows), "failed_points": sum(r.status == "failed" for r in rows)}
        if best:
            summary["best_valid_ndcg_at_10"] = best.valid.ndcg_at_10
        tracking.finish_run(root, record.mlflow_run_id, not summary["failed_points"], summary)


def show(root: Path, record: SweepRecord, rows: list[Row]) -> Path:
    """Print the sweep as a table (best validation NDCG@10 first) and write it as CSV."""
    fixed = ", ".join(f"{k}={v}" for k, v in record.fixed.items()) or "none"
    print(f"sweep {record.id} ({record.file}), project {record.project}, queued from commit {record.baseline[:10]}")
    print(f"same in every point: {fixed}; selection metric: valid_ndcg_at_10 (test metrics are shown, never used)")
    print(table(rows, record.varied))
    path = write_csv(records_dir(root, record.project) / f"{record.id}.csv", rows, record.varied)
    print(f"written to {path.relative_to(root)}")
    return path


def _queue(root: Path, project: str, params: Params, plan: sweepfile.Plan) -> SweepRecord:
    """A new record, the MLflow runs and one queued experiment per point; undone on failure."""
    sweep_id, width = _new_id(root, project, plan.name), len(str(len(plan.points)))
    record = SweepRecord(
        id=sweep_id, sweep=plan.name, file=plan.file, project=project, model_name=params.model_name(),
        baseline=vcs.head_commit(root), created=datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        varied=plan.varied, fixed=plan.fixed,
        points=[PointRecord(name=f"{sweep_id}-p{i:0{width}d}", params=p) for i, p in enumerate(plan.points, 1)])
    record.mlflow_run_id = tracking.start_sweep(root, project, sweep_id, plan.fixed, {
        "sweep_file": plan.file, "varied": ",".join(plan.varied), "dvc_baseline": record.baseline})
    queued: list[str] = []
    try:
        for point in record.points:
            point.mlflow_run_id = tracking.start_point(root, record.mlflow_run_id, point.name,
                                                       {k: point.params[k] for k in plan.varied})
            vcs.exp_queue(root, point.name, point.params)
            queued.append(point.name)
        write_typed(records_dir(root, project) / f"{sweep_id}.json", record)
    except BaseException:
        vcs.queue_remove(root, queued)
        for run_id in [p.mlflow_run_id for p in record.points] + [record.mlflow_run_id]:
            tracking.finish_run(root, run_id, False, {})
        raise
    return record


def _describe(params: dict, keys: list[str]) -> str:
    return ", ".join(f"{k}={params[k]}" for k in keys) or "no varied keys"


def wait(root: Path, record: SweepRecord) -> None:
    """Follow each point's output while it runs, until every point has left the queue."""
    followed: set[str] = set()
    for point in record.points:
        idle = 0
        while True:
            statuses, workers = vcs.queue_status(root)
            status = statuses.get(point.name)
            if status is None or status in vcs.QUEUE_DONE:
                say(f"{point.name}: {(status or 'no longer in the queue').lower()}")
                break
            if status == "Running" and point.name not in followed:
                followed.add(point.name)
                say(f"{point.name} ({_describe(point.params, record.varied)}) is running; its output follows")
                vcs.queue_follow(root, point.name)
                continue
            idle = idle + 1 if workers == 0 else 0
            if idle > IDLE_POLLS:
                raise UserError(f"the DVC queue has no worker left and {point.name} is still {status.lower()}: "
                                "`dvc queue start` resumes it, then `make compare`")
            time.sleep(POLL_SECONDS)


def require_no_workers(root: Path) -> None:
    """A worker still alive from an earlier queue would take the new points and run them with its
    own environment (tracking switched off, another tracking server): wait for it to exit."""
    for _ in range(EXIT_POLLS):
        statuses, workers = vcs.queue_status(root)
        if not workers:
            return
        time.sleep(POLL_SECONDS)
    busy = [name for name, status in statuses.items() if status in ("Queued", "Running")]
    raise UserError(f"DVC queue workers are still running{' ' + ', '.join(busy) if busy else ''}; they would run this "
                    "sweep with their own environment: wait until `dvc queue status` shows none (or `dvc queue stop`)")


def run(root: Path, name: str, workers: int) -> SweepRecord:
    vcs.require_repo(root)
    vcs.hold_repository(root, f"`make sweep SWEEP={name}`")
    project, params = projects.load_active(root)
    tracking.load_env(root)
    if tracking.enabled():
        tracking.check_store(tracking.uri_for_root(root))
    params = projects.render_pipeline(root, project, params)
    plan = sweepfile.plan(root, name, params)
    if not dvcyaml.switches(params)["trains"]:
        raise UserError(f"project {project}: raw.task={params.raw.task} trains no model; a sweep needs "
                        "raw.task train_val_test or train_val")
    require_no_workers(root)
    before = vcs.commit(root, f"{project}: code/params/pipeline before sweep {name}")
    say(f"git: committed {before[:10]}" if before else "git: nothing to commit before the sweep")
    record = _queue(root, project, params, plan)
    say(f"sweep {record.id}: {len(record.points)} DVC experiments queued "
        f"({', '.join(p.name for p in record.points)}); varied: {', '.join(plan.varied) or 'none'}")
    if record.mlflow_run_id:
        say(f"mlflow: sweep run {record.mlflow_run_id} in experiment bert4rec-{project} ({tracking.uri_for_root(root)})")
    vcs.queue_start(root, workers, dict(os.environ))
    try:
        wait(root, record)
    except KeyboardInterrupt:
        raise UserError("stopped waiting; the queue keeps running in the background (`dvc queue status`, "
                        "`dvc queue kill <name>`); `make compare` shows the sweep when it is done") from None
    rows, baselines = outcomes(root, record)
    close_runs(root, record, rows)
    show(root, record, ordered(rows + baselines))
    failed = [row.name for row in rows if row.status != "done"]
    if failed:
        raise UserError(f"{len(failed)} of {len(rows)} points failed ({', '.join(failed)}): `dvc queue logs <name>` "
                        "shows why; the others are compared above")
    return record


def main_sweep(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bert4rec sweep", description=(
        "queue one DVC experiment per point of a sweep file, run the queue, compare the points"))
    parser.add_argument("name", nargs="?", help=f"a sweep file {sweepfile.FOLDER}/<name>.yaml; without it, list them")
    parser.add_argument("--workers", type=at_least_one, default=1, help="DVC queue workers running points at once (default 1)")
    args = parser.parse_args(argv)
    root = Path.cwd()
    if args.name is None:
        print("\n".join(sweepfile.available(root)) or f"no sweeps yet: write {sweepfile.FOLDER}/<name>.yaml")
        return 0
    run(root, args.name, args.workers)
    return 0


def main_compare(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bert4rec compare", description="a sweep side by side (table + CSV)")
    parser.add_argument("--sweep", help="a sweep id (<name>-<n>); default: the project's newest sweep")
    args = parser.parse_args(argv)
    root = Path.cwd()
    vcs.require_repo(root)
    project = projects.active_name(root)
    record = load_record(root, project, args.sweep)
    tracking.load_env(root)
    rows, baselines = outcomes(root, record)
    close_runs(root, record, rows)
    show(root, record, ordered(rows + baselines))
    return 0
