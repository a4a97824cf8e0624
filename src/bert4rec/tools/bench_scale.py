"""Scale benchmark: the predecessor's 668,438-item catalogue through all five stages.

A synthetic log of that catalogue (time-boxed training, sampled softmax), at 1,000,000 and 250,000
users, so growth with the number of users is visible. Each stage runs as its own process; wall
time and peak memory per stage, training sequences/s, test and inference users/s go to
bench/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import time
from pathlib import Path

import psutil
import yaml

from bert4rec.arguments import catalogue_size, mean_length, population, positive
from bert4rec.data.manifest import Manifest
from bert4rec.errors import UserError
from bert4rec.fileio import read_json, write_json
from bert4rec.params import load_params
from bert4rec.tools import synthetic
from bert4rec.tools.benchkit import run_stage, scratch_project
from bert4rec.workflow import vcs

STAGES = ("raw", "tfrecord", "train_val", "test", "inference")
SCORING_BATCH = 512  # users per scoring batch at 668k items: ~10 % more users/s than 256 (one run, side by side)
TARGETS = {"peak_rss_mb": 8 * 1024, "test_users_per_second": 1000.0, "inference_users_per_second": 1000.0}


def settings(minutes: float) -> dict:
    """Histories average 20 items: 50 positions hold nearly all of them."""
    return {
        "tfrecord": {"max_seq_length": 50, "max_predictions_per_seq": 10, "num_shards": 8, "pool_size": 2},
        "train_val": {"model_name": "scale", "objective": "masked", "loss": "sampled_softmax", "num_negatives": 2048,
                      "batch_size": 256, "learning_rate": 0.002, "num_warmup_steps": 200, "num_train_steps": 1_000_000,
                      "training_time_limit_seconds": minutes * 60, "eval_every_steps": 2000,
                      "save_checkpoints_steps": 2000, "early_stopping_patience": 0, "validation_users": 10_000,
                      "length_buckets": 4, "model": {"max_position_embeddings": 50}},
        "test": {"batch_size": SCORING_BATCH},
        "inference": {"batch_size": SCORING_BATCH, "top_k": 10},
    }


def synthetic_log(work: Path, users: int, items: int, events_per_user: float) -> Path:
    data = work / f"synthetic_{users}_{items}.csv"
    if not data.exists():
        table = synthetic.generate(users=users, items=items, mean_length=events_per_user, seed=1, max_length=2000,
                                   zipf=0.8)  # flatter than the default, so most of the catalogue occurs
        synthetic.write(table, data, "csv")
    return data


def users_per_second(log: Path, stage: str) -> float:
    """The stage's own timing of its scoring pass (its log line), start-up excluded."""
    found = re.search(r"\(([0-9.]+) users/s\)", log.read_text())
    if not found:
        raise ValueError(f"{log}: no users/s figure from the {stage} stage")
    return float(found.group(1))


def rescore_settings(params: Path, fresh: dict) -> None:
    """--reuse-model: test and inference run with today's settings, the rest stays as trained."""
    values = yaml.safe_load(params.read_text())
    values.update({stage: fresh[stage] for stage in STAGES[3:]})
    params.write_text(yaml.safe_dump(values, sort_keys=False))


def run(work: Path, users: int, items: int, events_per_user: float, minutes: float, trained: dict | None = None) -> dict:
    """One size through the five stages; with `trained` (that size's entry of an earlier run) only
    test and inference run again, on the model and data that run left in its project."""
    project = work / f"scale_{users}"
    stages = dict(trained["stages"]) if trained else {}
    if trained:
        file_mb = trained["input"]["file_mb"]
        rescore_settings(project / "params.yaml", settings(minutes))
    else:
        data = synthetic_log(work, users, items, events_per_user)
        file_mb = round(data.stat().st_size / 2**20)
        shutil.rmtree(project, ignore_errors=True)
        scratch_project(project, data, settings(minutes))
    for stage in STAGES[3:] if trained else STAGES:
        stages[stage] = run_stage(stage, project, project / "logs")
        print(f"  {stage}: {stages[stage]}", flush=True)
    summary = read_json(project / "data" / "interim" / "raw_summary.json", "raw summary")
    model = read_json(project / "models" / "scale" / "model.json", "model")
    test = read_json(project / "results" / "scale" / "test_metrics.json", "test metrics")
    return {
        "users": users, "training_minutes": minutes, "commit": vcs.head_commit(Path.cwd()),
        "rerun": ["test", "inference"] if trained else [],
        "input": {"users": summary["read"]["users"], "events": summary["read"]["events"],
                  "items_in_log": summary["read"]["items"], "file_mb": file_mb},
        "stages": stages,
        "training": {"steps": model["trained_steps"], "seconds": model["training_seconds"],
                     "sequences_per_second": model["training_sequences_per_second"]},
        "test_users_per_second": users_per_second(project / "logs" / "test.log", "test"),
        "inference_users_per_second": users_per_second(project / "logs" / "inference.log", "inference"),
        "test": {k: test[k] for k in ("ndcg_at_10", "hit_at_10", "mrr", "users")},
        "most_popular": {k: test["most_popular"][k] for k in ("ndcg_at_10", "hit_at_10", "mrr")},
        "item_to_item": {k: test["item_to_item"][k] for k in ("ndcg_at_10", "hit_at_10", "mrr")},
        "peak_rss_mb": max(s["peak_rss_mb"] for s in stages.values()),
    }


def earlier_runs(out: Path, sizes: list[int], work: Path) -> dict[int, dict]:
    """--reuse-model: each size's entry in the last results, its project still in place."""
    runs = {r["users"]: r for r in read_json(out, "scale benchmark results").get("runs", [])} if out.exists() else {}
    for users in sizes:
        if users not in runs or not (work / f"scale_{users}" / "models" / "scale" / "model.json").exists():
            raise UserError(f"{out}: no earlier run at {users:,} users with its trained model in "
                            f"{work / f'scale_{users}'}; run bert4rec bench-scale --users {users} first")
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bert4rec bench-scale", description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("bench/scale"))
    parser.add_argument("--out", type=Path, default=Path("bench/scale.json"))
    parser.add_argument("--users", type=population, nargs="+", default=[250_000, 1_000_000])
    parser.add_argument("--items", type=catalogue_size, default=668_438)
    parser.add_argument("--events-per-user", type=mean_length, default=20.0)
    parser.add_argument("--minutes", type=positive, nargs="+", default=[5.0, 20.0],
                        help="training budget per size (one value for all, or one per --users)")
    parser.add_argument("--reuse-model", action="store_true",
                        help="rerun only test and inference on the models the last run trained (scoring changes)")
    args = parser.parse_args(argv)
    if len(args.minutes) not in (1, len(args.users)):
        parser.error(f"argument --minutes: expected one budget or one per --users ({len(args.users)}), "
                     f"got {len(args.minutes)}")
    minutes = args.minutes * len(args.users) if len(args.minutes) == 1 else args.minutes
    runs = earlier_runs(args.out, args.users, args.work) if args.reuse_model else {}
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for users, budget in zip(args.users, minutes):
        trained = runs.get(users)  # only with --reuse-model
        budget = trained["training_minutes"] if trained else budget
        print(f"{users:,} users: test and inference on the model trained before ..." if trained else
              f"{users:,} users, {args.items:,} items, {budget:g} minutes of training ...", flush=True)
        runs[users] = run(args.work, users, args.items, args.events_per_user, budget, trained)
        result = {"machine": {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30),
                              "platform": platform.platform()},
                  "runs": [runs[size] for size in sorted(runs)], "wall_seconds": round(time.perf_counter() - started)}
        result["targets"] = targets(result["runs"])
        write_json(args.out, result)  # after every size: a long run stopped early keeps what it measured
    largest = args.work / f"scale_{max(args.users)}"
    from bert4rec.model.recommend import scoring_floor  # TensorFlow, after the stages' processes

    floor = scoring_floor(Manifest.read(largest / "data" / "processed" / "records").num_tokens,
                          load_params(largest / "params.yaml").train_val.model.hidden_size, SCORING_BATCH)
    result["scoring_floor"] = {
        "users_per_second": floor, "test_share": round(result["targets"]["test_users_per_second"]["measured"] / floor, 2),
        "inference_share": round(result["targets"]["inference_users_per_second"]["measured"] / floor, 2),
        "note": "the catalogue's block matmuls alone at the largest size's shapes (recommend.scoring_floor), measured after "
                "the runs: the stages' users/s as a share of it"}
    write_json(args.out, result)
    print(f"scoring floor (block matmuls alone): {floor:,.0f} users/s", flush=True)
    print(json.dumps(result["targets"], indent=2))
    return 0


def targets(runs: list[dict]) -> dict:
    largest = max(runs, key=lambda r: r["users"])
    out = {key: {"target": target, "measured": largest[key],
                 "met": largest[key] <= target if key == "peak_rss_mb" else largest[key] >= target}
           for key, target in TARGETS.items()}
    beats = largest["test"]["ndcg_at_10"] > largest["most_popular"]["ndcg_at_10"]
    out["beats_most_popular"] = {"model": largest["test"]["ndcg_at_10"],
                                 "most_popular": largest["most_popular"]["ndcg_at_10"], "met": beats}
    if len(runs) > 1:
        small = min(runs, key=lambda r: r["users"])
        growth = {stage: round((largest["stages"][stage]["wall_s"] / largest["users"])
                               / (small["stages"][stage]["wall_s"] / small["users"]), 2)
                  for stage in ("raw", "tfrecord", "test", "inference")}
        out["time_per_user_large_vs_small"] = {"ratio": growth, "note": "1.0 = linear in users"}
        items = largest["input"]["items_in_log"] / small["input"]["items_in_log"]
        out["scoring_time_per_user_and_item_large_vs_small"] = {
            "ratio": {stage: round(growth[stage] / items, 2) for stage in ("test", "inference")},
            "note": f"scoring a user costs one pass over the catalogue, {items:.2f}x larger at the larger size "
                    "(more of the 668,438 items occur); 1.0 = linear in users x items"}
    return out
