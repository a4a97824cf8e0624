"""Fine-tuning benchmark: pretrain on ML-100K before a date, fine-tune on the later period.

A model is pretrained on the events before 1998-01-01 (validated on the last two weeks of
1997). The later period is split by time (train from 1998-01-01, validation from 1998-03-15,
test from 1998-04-01) and trained on with the same wall-clock budget: from scratch, fine-tuned
with the default gradual schedule, fine-tuned with everything unfrozen at once, and fine-tuned
with everything at once with random rows instead of mean rows for the items the pretrained model
never saw.
Each stage runs as its own process; results in bench/finetune.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from bert4rec.arguments import positive
from bert4rec.data.manifest import Manifest
from bert4rec.data.vocabulary import load_vocabulary
from bert4rec.fileio import read_json, write_json
from bert4rec.params import merge
from bert4rec.tools.benchkit import ML100K, require_data, run_stage, scratch_project

COMMON = {
    "tfrecord": {"max_seq_length": 100, "max_predictions_per_seq": 20, "num_shards": 2, "pool_size": 2},
    # the settings the README's figures were measured with (objective and attention dropout were
    # then the defaults)
    "train_val": {"objective": "masked", "batch_size": 64, "learning_rate": 0.003,
                  "model": {"max_position_embeddings": 100, "attention_probs_dropout_prob": 0.1},
                  "num_warmup_steps": 100, "num_train_steps": 100000,  # the time budget ends training
                  "eval_every_steps": 50, "save_checkpoints_steps": 100000, "early_stopping_patience": 0,
                  "length_buckets": 4},
    "test": {"per_user_ranks": True},
}
PRETRAIN = {"raw": {"task": "train_val", "split": "time", "validation_start": "1997-12-15",
                    "test_start": "1998-01-01", "test_end": "1998-01-02"},  # task train_val: no test window
            "train_val": {"model_name": "pretrained"}}
LATER = {"raw": {"split": "time", "data_start": "1998-01-01", "validation_start": "1998-03-15",
                 "test_start": "1998-04-01"}}
PARENT = "../pretrain/models/pretrained"
VARIANTS = {  # new_item_init spelled out: the measured rows do not depend on its default
    "scratch": {},
    "finetune_gradual": {"init_from": PARENT, "new_item_init": "mean"},  # the default schedule
    "finetune_all_at_once": {"init_from": PARENT, "new_item_init": "mean",
                             "finetune_schedule": [{"train": ["all"], "steps": 100000}]},
    "finetune_all_at_once_random_new_items": {"init_from": PARENT, "new_item_init": "random",
                                              "finetune_schedule": [{"train": ["all"], "steps": 100000}]},
}


def params_for(*parts: dict) -> dict:
    out: dict = {}
    for part in (COMMON, *parts):
        merge(out, json.loads(json.dumps(part)))
    return out


def new_item_metrics(ranks: Path, parent_items: set) -> dict:
    """NDCG@10 / HR@10 over the test targets that the pretrained model never saw."""
    table = pd.read_parquet(ranks)
    new = table[table["target_item_id"].notna() & ~table["target_item_id"].isin(parent_items)]
    rank = new["rank"].to_numpy()
    hit = (rank >= 1) & (rank <= 10)
    return {"targets": int(len(new)), "hit_at_10": round(float(hit.mean()), 4) if len(new) else None,
            "ndcg_at_10": round(float(np.where(hit, 1 / np.log2(rank + 1.0), 0).mean()), 4) if len(new) else None}


def at_warm_start(later: Path, parent_folder: Path) -> dict:
    """Test NDCG@10 / HR@10 right after the warm start, before any training, per new-item rule:
    over all targets and over the targets the pretrained model never saw."""
    from bert4rec.model import metrics, recommend, runtime, warmstart
    from bert4rec.model.network import build_model

    manifest = Manifest.read(later / "data" / "processed" / "records")
    parent = warmstart.load_parent(parent_folder, PARENT)
    items = load_vocabulary(later / "references" / "items.parquet")
    match = warmstart.reconcile(parent.item_ids, items)
    out = {}
    for rule in ("mean", "random"):
        runtime.start("default", 42, False, "off")  # the same random rows for both rules
        model = build_model(manifest.num_tokens, parent.info.model)
        warmstart.warm_start(model, parent, match, rule)
        scorer = recommend.Recommender(recommend.ModelScorer(model))
        ranks = recommend.evaluate({"model": scorer}, manifest, "test", 512)["model"].per_user()
        new = np.isin(ranks["target"], match.new_tokens)
        out[rule] = {name: {k: round(v, 4) for k, v in metrics.from_ranks(ranks["rank"][rows]).items()
                            if k in ("ndcg_at_10", "hit_at_10", "mrr")} | {"targets": int(rows.sum())}
                     for name, rows in (("all", np.ones(len(new), bool)), ("new_items", new))}
    return out


def reached(curves: pd.DataFrame, level: float) -> dict | None:
    """The first validation at or above `level`: its step and wall seconds into training."""
    rows = curves[curves["valid_ndcg_at_10"] >= level]
    return None if rows.empty else {"step": int(rows["step"].iloc[0]), "seconds": float(rows["train_seconds"].iloc[0])}


def summarise(project: Path, name: str, parent_items: set) -> dict:
    model = read_json(project / "models" / name / "model.json", "model description")
    test = read_json(project / "results" / name / "test_metrics.json", "test metrics")
    curves = pd.read_csv(project / "results" / name / "train_val_curves.csv")
    return {
        "test": {k: test[k] for k in ("ndcg_at_10", "hit_at_10", "ndcg_at_100", "mrr", "targets", "users")},
        "most_popular_test": {k: test["most_popular"][k] for k in ("ndcg_at_10", "hit_at_10")},
        "best_valid_ndcg_at_10": max(curves["valid_ndcg_at_10"].dropna()),
        "steps": model["trained_steps"], "training_seconds": model["training_seconds"],
        "new_item_test_targets": new_item_metrics(project / "results" / name / "test_ranks.parquet", parent_items),
        "parent": model.get("parent"), "phases": model.get("phases"),
        "curve": curves[["step", "train_seconds", "valid_ndcg_at_10"]].dropna().to_dict("records"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bert4rec bench-finetune", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ML100K, help="MovieLens-100K u.data(.gz), with timestamps")
    parser.add_argument("--work", type=Path, default=Path("bench/finetune"), help="scratch project folders")
    parser.add_argument("--out", type=Path, default=Path("bench/finetune.json"))
    parser.add_argument("--seconds", type=positive, default=120.0, help="training budget of every later-period model")
    parser.add_argument("--pretrain-seconds", type=positive, default=240.0)
    parser.add_argument("--reuse-pretrained", action="store_true", help="keep the pretrained model of the last run")
    args = parser.parse_args(argv)
    require_data(args.data, "ML-100K", "ml-100k")
    started, logs = time.perf_counter(), args.work / "logs"
    pretrain, later = args.work / "pretrain", args.work / "later"
    stages = {}
    if not args.reuse_pretrained:
        shutil.rmtree(pretrain, ignore_errors=True)
        scratch_project(pretrain, args.data, params_for(PRETRAIN, {"train_val": {
            "training_time_limit_seconds": args.pretrain_seconds}}))
        stages["pretrain"] = {s: run_stage(s, pretrain, logs / "pretrain") for s in ("raw", "tfrecord", "train_val")}
    parent_items = set(pq.read_table(pretrain / "models" / "pretrained" / "items.parquet").column("item_id").to_pylist())
    shutil.rmtree(later, ignore_errors=True)
    scratch_project(later, args.data, params_for(LATER))
    stages["later"] = {s: run_stage(s, later, logs / "later") for s in ("raw", "tfrecord")}
    results = {}
    for name, settings in VARIANTS.items():
        scratch_project(later, args.data, params_for(LATER, {"train_val": {
            "model_name": name, "training_time_limit_seconds": args.seconds, **settings}}))
        stages[name] = {s: run_stage(s, later, logs / name) for s in ("train_val", "test")}
        results[name] = summarise(later, name, parent_items)
    scratch_best = results["scratch"]["best_valid_ndcg_at_10"]
    for result in results.values():
        result["reaches_scratch_best_valid"] = reached(pd.DataFrame(result["curve"]), scratch_best)
    report = {"data": str(args.data), "budget_seconds": args.seconds, "pretrain_seconds": args.pretrain_seconds,
              "at_warm_start": at_warm_start(later, pretrain / "models" / "pretrained"),
              "raw_summary": read_json(later / "data" / "interim" / "raw_summary.json", "raw summary")["windows"],
              "results": results, "stages": stages, "wall_seconds": round(time.perf_counter() - started, 1)}
    write_json(args.out, report)
    print(json.dumps({"at_warm_start": report["at_warm_start"], **{
        name: {k: r[k] for k in ("test", "best_valid_ndcg_at_10", "steps", "new_item_test_targets",
                                 "reaches_scratch_best_valid")} for name, r in results.items()}}, indent=2))
    return 0
