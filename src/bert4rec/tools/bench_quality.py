"""Quality benchmark: ML-1M through all five stages with the params defaults (what a user gets).

raw -> tfrecord -> train_val -> test -> inference; only the data, the objective and the time
budget are set.

Protocol of the published results (anchors.md): leave-one-out, full ranking over all items,
seen items removed, all 6,040 users. Each stage runs as its own process (peak memory sampled,
logs in <work>/<objective>/logs/); inference users/s is then timed in-process over every user
(top-10, whole catalogue, seen items removed), start-up excluded, best of three passes.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import time
from pathlib import Path

import yaml

from bert4rec.arguments import positive
from bert4rec.data.manifest import Manifest
from bert4rec.fileio import read_json, write_json
from bert4rec.model import recommend, store
from bert4rec.params import load_params
from bert4rec.tools.benchkit import ML1M, require_data, run_stage, scratch_project

STAGES = ("raw", "tfrecord", "train_val", "test", "inference")
TARGETS = {  # issue 12: above every published BERT4Rec (masked) and SASRec+ (causal) on this protocol
    "masked": {"ndcg_at_10": 0.175, "hit_at_10": 0.31, "ndcg_at_10_at_30_minutes": 0.160},
    "causal": {"ndcg_at_10": 0.190, "hit_at_10": 0.32},
}
PEAK_RSS_MB = 2048


def make_project(root: Path, data: Path, objective: str, minutes: float) -> Path:
    """Defaults everywhere but the data, the objective and the time budget (and the paper's
    sampled protocol as an extra test metric)."""
    shutil.rmtree(root, ignore_errors=True)
    return scratch_project(root, data, {
        "train_val": {"model_name": f"bench-{objective}", "objective": objective,
                      "training_time_limit_seconds": minutes * 60},
        "test": {"sampled_negatives": 100},
    })


def inference_speed(project: Path, model_name: str) -> dict:
    """Top-10 for every user at the inference stage's batch size: best of three passes after a
    warm-up (this shared machine's speed wanders)."""
    batch_size = load_params(project / "params.yaml").inference.batch_size
    manifest = Manifest.read(project / "data" / "processed" / "records")
    model, _ = store.load_model(project / "models" / model_name, manifest)
    recommender = recommend.Recommender(recommend.ModelScorer(model), with_rank=False)
    passes, users = [], 0
    for attempt in range(4):
        started = time.perf_counter()
        users = sum(len(chunk.user_index) for chunk in recommend.predict(recommender, manifest, "inference", batch_size, 10))
        if attempt:
            passes.append(time.perf_counter() - started)
    return {"users": int(users), "batch_size": batch_size, "seconds": round(min(passes), 3),
            "seconds_per_pass": [round(s, 3) for s in passes], "users_per_second": round(users / min(passes), 1)}


def validation_curve(project: Path, model_name: str) -> list[dict]:
    """Valid NDCG@10/HR@10 at every evaluation, with training seconds and sequences seen (and,
    with weight averaging, the weights' own NDCG@10 beside the average's)."""
    with open(project / "results" / model_name / "train_val_curves.csv") as handle:
        return [_curve_point(row) for row in csv.DictReader(handle) if row.get("valid_ndcg_at_10")]


def _curve_point(row: dict) -> dict:
    point = {"step": int(row["step"]), "train_seconds": float(row["train_seconds"]),
             "sequences_seen": int(float(row["sequences_seen"])),
             "ndcg_at_10": round(float(row["valid_ndcg_at_10"]), 4), "hit_at_10": round(float(row["valid_hit_at_10"]), 4)}
    if row.get("valid_raw_ndcg_at_10"):
        point["raw_ndcg_at_10"] = round(float(row["valid_raw_ndcg_at_10"]), 4)
    return point


def at_minutes(curve: list[dict], minutes: float) -> dict | None:
    """The last validation within the first `minutes` of training."""
    before = [point for point in curve if point["train_seconds"] <= minutes * 60]
    return before[-1] if before else None


def bench(objective: str, data: Path, work: Path, minutes: float) -> dict:
    project = make_project(work / objective / "ml1m", data, objective, minutes)
    name = f"bench-{objective}"
    stages = {stage: run_stage(stage, project, work / objective / "logs") for stage in STAGES}
    model = read_json(project / "models" / name / "model.json", "model description")
    test = read_json(project / "results" / name / "test_metrics.json", "test metrics")
    baseline = test.pop("most_popular")
    curve = validation_curve(project, name)
    half = at_minutes(curve, minutes / 2)
    result = {
        "objective": objective, "test": test, "most_popular": baseline, "valid": model.get("valid"),
        "training": {"seconds": model.get("training_seconds"), "steps": model.get("trained_steps"),
                     "best_step": model.get("best_step"), "stopped_early": model.get("stopped_early"),
                     "sequences_per_second": model.get("training_sequences_per_second")},
        "valid_curve": curve, f"valid_at_{minutes / 2:g}_minutes": half,
        "inference": inference_speed(project, name), "stages": stages,
        "peak_rss_mb": max(s["peak_rss_mb"] for s in stages.values()),
        "config": yaml.safe_load((project / "models" / name / "config.yaml").read_text()),
    }
    measured = {"ndcg_at_10": test["ndcg_at_10"], "hit_at_10": test["hit_at_10"],
                "ndcg_at_10_at_30_minutes": (half or {}).get("ndcg_at_10", 0.0)}
    result["targets"] = {key: {"target": target, "measured": measured[key], "met": measured[key] >= target}
                         for key, target in TARGETS[objective].items()}
    result["targets"]["peak_rss_mb"] = {"target": PEAK_RSS_MB, "measured": result["peak_rss_mb"],
                                        "met": result["peak_rss_mb"] <= PEAK_RSS_MB}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bert4rec bench-quality", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ML1M, help="ML-1M in the SASRec/BERT4Rec 'user item' format")
    parser.add_argument("--work", type=Path, default=Path("bench/quality"), help="scratch folder")
    parser.add_argument("--out", type=Path, default=Path("bench/quality.json"))
    parser.add_argument("--objective", choices=("masked", "causal", "both"), default="both")
    parser.add_argument("--minutes", type=positive, default=60.0, help="training budget per objective (wall clock)")
    args = parser.parse_args(argv)
    require_data(args.data, "ML-1M", "ml-1m")
    objectives = ("masked", "causal") if args.objective == "both" else (args.objective,)
    started = time.perf_counter()
    previous = read_json(args.out, "benchmark") if args.out.exists() else {}
    result = {"dataset": args.data.name, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "protocol": "leave-one-out, full ranking over all items, seen items removed, all users",
              "minutes": args.minutes, "runs": {**previous.get("runs", {})}}
    for objective in objectives:
        print(f"{objective}: {args.minutes:g} minutes of training ...", flush=True)
        result["runs"][objective] = bench(objective, args.data, args.work, args.minutes)
        write_json(args.out, {**result, "wall_seconds": round(time.perf_counter() - started, 1)})
        print(json.dumps(result["runs"][objective]["targets"], indent=2), flush=True)
    return 0
