"""Benchmark of the data stages: wall time and peak memory of raw + tfrecord.

1. ML-1M (../shared/data) with the predecessor's settings, run twice with different worker
   counts to show the records are byte-identical.
2. Synthetic event logs at two sizes (default 250k and 1M users, 20 events per user on average,
   668,438 items) to show peak memory does not grow with the number of users.
Each stage runs as its own process; memory is sampled over the whole process tree. Stages run
with MLflow tracking off (the data work); for ML-1M the wall time with tracking on (a run in
the local sqlite store, as users get by default) is reported beside it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import psutil

from bert4rec.arguments import catalogue_size, mean_length, population
from bert4rec.errors import UserError
from bert4rec.fileio import write_json
from bert4rec.tools import synthetic
from bert4rec.tools.benchkit import ML1M, run_stage, scratch_project

PREDECESSOR_SETTINGS = {
    "masking": "static", "max_seq_length": 200, "max_predictions_per_seq": 20, "dupe_factor": 10,
    "prop_sliding_window": 0.5, "masked_lm_prob": 0.2, "pool_size": 2, "num_shards": 2,
}


def stage(name: str, project: Path, tracking: bool = False) -> dict:
    """One stage's data work; tracking=True adds its MLflow run (local sqlite store) as users get it."""
    return run_stage(name, project, tracking=tracking)


def make_project(root: Path, data: Path, tfrecord: dict, raw: dict | None = None) -> Path:
    shutil.rmtree(root, ignore_errors=True)
    return scratch_project(root, data, {"raw": raw or {}, "tfrecord": tfrecord})


def records_digest(project: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((project / "data" / "processed" / "records").glob("*.tfrecord")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def disk_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20, 1)


def bench_ml1m(work: Path) -> dict:
    if not ML1M.exists():
        raise UserError(f"{ML1M}: ML-1M benchmark file not found (../shared/data beside the checkout)")
    project = make_project(work / "ml1m", ML1M, PREDECESSOR_SETTINGS)
    raw = stage("raw", project)
    tfrecord = stage("tfrecord", project)
    first = records_digest(project)
    manifest = json.loads((project / "data/processed/records/manifest.json").read_text())
    with_tracking = {name: stage(name, project, tracking=True)["wall_s"] for name in ("raw", "tfrecord")}
    make_project(project, ML1M, {**PREDECESSOR_SETTINGS, "pool_size": 1})
    stage("raw", project)
    stage("tfrecord", project)
    return {
        "settings": PREDECESSOR_SETTINGS,
        "raw": raw,
        "tfrecord": tfrecord,
        "total_wall_s": round(raw["wall_s"] + tfrecord["wall_s"], 2),
        "with_mlflow_tracking_wall_s": {**with_tracking, "total": round(sum(with_tracking.values()), 2)},
        "peak_rss_mb": max(raw["peak_rss_mb"], tfrecord["peak_rss_mb"]),
        "examples": {s: v["examples"] for s, v in manifest["splits"].items()},
        "records_mb": disk_mb(project / "data" / "processed" / "records"),
        "byte_identical_pool_1_vs_2": records_digest(project) == first,
        "predecessor": {"tfrecord_wall_s": 92, "peak_rss_mb": 1900, "train_examples": 112992},
    }


def bench_large(work: Path, users: int, events: int, items: int) -> dict:
    data = work / f"synthetic_{users}.csv"
    if not data.exists():
        started = time.perf_counter()
        # a flatter popularity than the default so most of the large catalogue is actually used
        table = synthetic.generate(users=users, items=items, mean_length=events / users, seed=1, max_length=2000, zipf=0.8)
        synthetic.write(table, data, "csv")
        print(f"  generated {table.num_rows:,} events in {time.perf_counter() - started:.0f} s", flush=True)
        del table
    project = make_project(work / f"large_{users}", data, {"num_shards": 8, "pool_size": 2})
    raw = stage("raw", project)
    tfrecord = stage("tfrecord", project)
    summary = json.loads((project / "data/interim/raw_summary.json").read_text())
    manifest = json.loads((project / "data/processed/records/manifest.json").read_text())
    shutil.rmtree(project / "data" / "processed")
    return {
        "input": {"users": summary["read"]["users"], "events": summary["read"]["events"],
                  "items": summary["read"]["items"], "file_mb": round(data.stat().st_size / 2**20)},
        "raw": raw,
        "tfrecord": tfrecord,
        "examples": {s: v["examples"] for s, v in manifest["splits"].items()},
        "masking": manifest["masking"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bert4rec bench-data", description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("bench/work"), help="scratch folder")
    parser.add_argument("--out", type=Path, default=Path("bench/data.json"))
    parser.add_argument("--users", type=population, nargs="+", default=[250_000, 1_000_000])
    parser.add_argument("--events-per-user", type=mean_length, default=20.0)
    parser.add_argument("--items", type=catalogue_size, default=668_438)
    parser.add_argument("--skip-large", action="store_true", help="only ML-1M")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    result = {"machine": {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30)}}
    print("ML-1M, predecessor settings ...", flush=True)
    result["ml1m"] = bench_ml1m(args.work)
    print(json.dumps(result["ml1m"], indent=2), flush=True)
    if not args.skip_large:
        result["synthetic"] = []
        for users in args.users:
            events = int(users * args.events_per_user)
            print(f"synthetic log: {users:,} users, ~{events:,} events, {args.items:,} items ...", flush=True)
            run = bench_large(args.work, users, events, args.items)
            print(json.dumps(run, indent=2), flush=True)
            result["synthetic"].append(run)
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0
