"""Peer benchmark: RecTools' BERT4Rec and SASRec beside ours on ML-1M, same size and budget.

RecTools (PyTorch, CPU build) trains on the same leave-one-out split as ours, with the same model
size and the same wall-clock training budget.

RecTools is installed into its own virtualenv (<work>/venv), never into ours. Each peer model
runs as its own process (tools/peer_rectools.py): trained for the budget, then top-10 for all
6,040 users with seen items filtered. Its recommendations are scored with RecTools' metrics and
with ours; our side comes from `make bench-quality` (bench/quality.json, same budget): masked
beside BERT4Rec, causal beside SASRec. One table: quality, training sequences/s, inference
users/s, peak RSS, ours / theirs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bert4rec.errors import UserError
from bert4rec.fileio import read_json, write_json
from bert4rec.model import metrics
from bert4rec.tools.benchkit import ML1M, measure, require_data

PEER_PACKAGES = ("torch==2.13.0", "rectools[torch]==0.19.0")  # torch first: the CPU build, not CUDA's
OURS = {"bert4rec": "masked", "sasrec": "causal"}  # the peer model and our objective it faces
SCRIPT = Path(__file__).with_name("peer_rectools.py")


def peer_python(folder: Path) -> Path:
    """The peer's virtualenv, made on first use (a few minutes; ~1.3 GB)."""
    python = folder / "bin" / "python"
    if (folder / ".installed").exists():
        return python
    print(f"installing {' '.join(PEER_PACKAGES)} into {folder} ...", flush=True)
    for command in ([sys.executable, "-m", "venv", "--clear", str(folder)],
                    [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PEER_PACKAGES]):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise UserError(f"{folder}: installing the peer failed ({' '.join(command[:4])} ...): "
                            f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    (folder / ".installed").write_text("\n".join(PEER_PACKAGES) + "\n")
    return python


def write_split(data: Path, folder: Path) -> pd.DataFrame:
    """Leave-one-out as our raw stage makes it: train = all but the last two items of each user,
    history = all but the last (what the test input sees), test = the last item."""
    frame = pd.read_csv(data, sep=" ", names=["user", "item"], dtype="int64")
    frame["position"] = frame.groupby("user").cumcount()
    length = frame.groupby("user")["position"].transform("size")
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", frame["position"] < length - 2), ("history", frame["position"] < length - 1),
                       ("test", frame["position"] == length - 1)):
        frame[rows].to_csv(folder / f"{name}.csv", index=False)
    return frame[frame["position"] == length - 1]


def model_size(config: dict) -> dict:
    """Our model's size and training settings (from the config bench-quality saved) for the peer."""
    model, train = config["train_val"]["model"], config["train_val"]
    return {"hidden": model["hidden_size"], "layers": model["num_hidden_layers"], "heads": model["num_attention_heads"],
            "dropout": model["hidden_dropout_prob"], "length": config["tfrecord"]["max_seq_length"],
            "mask": config["tfrecord"]["masked_lm_prob"], "lr": train["learning_rate"], "batch": train["batch_size"],
            "seed": train["seed"], "recommend_batch": config["inference"]["batch_size"]}


def our_metrics_of(recommendations: Path, test: pd.DataFrame) -> dict[str, float]:
    """NDCG@10 / HR@10 of the peer's top-10 lists by our metric code (a target outside the list
    is a miss; the lists fix nothing beyond rank 10)."""
    lists = pd.read_csv(recommendations)
    found = test.merge(lists, on=["user", "item"], how="left")
    rank = np.where(found["rank"].isna(), metrics.MISS, found["rank"].fillna(1).astype(np.int64) - 1)
    scored = metrics.from_ranks(rank)
    return {key: round(scored[key], 4) for key in ("ndcg_at_10", "hit_at_10")}


def ours(run: dict) -> dict:
    return {"ndcg_at_10": round(run["test"]["ndcg_at_10"], 4), "hit_at_10": round(run["test"]["hit_at_10"], 4),
            "sequences_per_second": run["training"]["sequences_per_second"],
            "users_per_second": run["inference"]["users_per_second"], "peak_rss_mb": run["peak_rss_mb"]}


def peer(python: Path, kind: str, split: Path, minutes: float, size: dict, work: Path, test: pd.DataFrame) -> dict:
    out = work / kind
    command = [str(python), str(SCRIPT), "--split", str(split), "--model", kind, "--minutes", str(minutes),
               "--size", json.dumps(size), "--out", str(out)]
    print(f"{kind} (RecTools): {minutes:g} minutes of training ...", flush=True)
    process = measure(command, work / f"{kind}.log")
    reported = read_json(out / "peer.json", "peer results")
    return {"ndcg_at_10": round(reported["own_metrics"]["ndcg_at_10"], 4),
            "hit_at_10": round(reported["own_metrics"]["hit_at_10"], 4),
            "ours_on_its_lists": our_metrics_of(out / "recommendations.csv", test),
            "sequences_per_second": reported["sequences_per_second"], "users_per_second": reported["users_per_second"],
            "peak_rss_mb": process["peak_rss_mb"], "wall_s": process["wall_s"], "details": reported}


def table(rows: dict[str, dict]) -> str:
    keys = ("ndcg_at_10", "hit_at_10", "sequences_per_second", "users_per_second", "peak_rss_mb")
    lines = ["| | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for kind, pair in rows.items():
        for side in ("ours", "theirs"):
            lines.append(f"| {kind} {side} | " + " | ".join(str(pair[side][k]) for k in keys) + " |")
        lines.append(f"| {kind} ours / theirs | " + " | ".join(
            f"{pair['ours'][k] / pair['theirs'][k]:.2f}" if pair["theirs"][k] else "-" for k in keys) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bert4rec bench-peer", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ML1M, help="ML-1M in the SASRec/BERT4Rec 'user item' format")
    parser.add_argument("--quality", type=Path, default=Path("bench/quality.json"), help="our side (make bench-quality)")
    parser.add_argument("--work", type=Path, default=Path("bench/peer"))
    parser.add_argument("--out", type=Path, default=Path("bench/peer.json"))
    parser.add_argument("--models", nargs="+", choices=tuple(OURS), default=list(OURS))
    args = parser.parse_args(argv)
    require_data(args.data, "ML-1M", "ml-1m")
    if not args.quality.exists():
        raise UserError(f"{args.quality}: our side is missing; run `make bench-quality` first (the peer gets its budget)")
    quality = read_json(args.quality, "quality benchmark")
    missing = [OURS[kind] for kind in args.models if OURS[kind] not in quality.get("runs", {})]
    if missing:
        raise UserError(f"{args.quality}: no {', '.join(missing)} run; `bert4rec bench-quality --objective both` first")
    python = peer_python(args.work / "venv")
    test = write_split(args.data, args.work / "split")
    rows = {}
    for kind in args.models:
        run = quality["runs"][OURS[kind]]
        theirs = peer(python, kind, args.work / "split", quality["minutes"], model_size(run["config"]), args.work, test)
        rows[kind] = {"ours": ours(run), "theirs": theirs, "our_objective": OURS[kind]}
        write_json(args.out, {"minutes": quality["minutes"], "dataset": args.data.name, "peer": list(PEER_PACKAGES),
                              "models": rows})
    print(table(rows))
    return 0
