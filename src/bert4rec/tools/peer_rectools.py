"""The peer's side of `bert4rec bench-peer`: one RecTools model trained, then its top-10 written.

Run by the Python of the peer's own virtualenv (it imports RecTools, PyTorch and pandas, nothing
of bert4rec): one RecTools transformer trained on the split bench-peer wrote, for a wall-clock
budget, then top-10 for every test user with seen items filtered. Writes recommendations.csv
(user, item, rank) and peer.json (its own metrics, training and inference speed, peak memory).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from datetime import timedelta
from pathlib import Path


def make_trainer(minutes: float):
    """A Lightning trainer stopped by the clock, not by an epoch count (RecTools' default)."""
    from pytorch_lightning import Trainer

    return Trainer(max_time=timedelta(minutes=minutes), max_epochs=1_000_000, accelerator="cpu", devices=1,
                   enable_checkpointing=False, logger=False, enable_progress_bar=False, enable_model_summary=False)


def interactions(path: Path):
    """user,item,position rows as RecTools interactions (the position orders a user's items)."""
    import pandas as pd
    from rectools import Columns

    frame = pd.read_csv(path)
    return pd.DataFrame({Columns.User: frame["user"], Columns.Item: frame["item"], Columns.Weight: 1.0,
                         Columns.Datetime: pd.to_datetime(frame["position"], unit="s")})


def build(kind: str, size: dict, minutes: float):
    from rectools.models import BERT4RecModel, SASRecModel
    from rectools.models.nn.item_net import IdEmbeddingsItemNet

    common = dict(n_blocks=size["layers"], n_heads=size["heads"], n_factors=size["hidden"],
                  dropout_rate=size["dropout"], session_max_len=size["length"], loss="softmax", lr=size["lr"],
                  batch_size=size["batch"], item_net_block_types=(IdEmbeddingsItemNet,),
                  get_trainer_func=make_trainer, get_trainer_func_kwargs={"minutes": minutes},
                  recommend_torch_device="cpu", recommend_batch_size=size["recommend_batch"])
    if kind == "bert4rec":
        return BERT4RecModel(mask_prob=size["mask"], **common)
    return SASRecModel(**common)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--model", choices=("bert4rec", "sasrec"), required=True)
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--size", type=json.loads, required=True, help="hidden, layers, heads, length, ...")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from pytorch_lightning import seed_everything
    from rectools import Columns
    from rectools.dataset import Dataset
    from rectools.metrics import NDCG, HitRate, calc_metrics

    seed_everything(args.size["seed"], verbose=False)
    train, history, test = (interactions(args.split / f"{name}.csv") for name in ("train", "history", "test"))
    model = build(args.model, args.size, args.minutes)
    started = time.perf_counter()
    model.fit(Dataset.construct(train))
    training_seconds = time.perf_counter() - started
    steps = model.fit_trainer.global_step

    users = test[Columns.User].unique()
    started = time.perf_counter()
    recommendations = model.recommend(users=users, dataset=Dataset.construct(history), k=10, filter_viewed=True)
    recommend_seconds = time.perf_counter() - started

    own = calc_metrics({"ndcg_at_10": NDCG(k=10, divide_by_achievable=True), "hit_at_10": HitRate(k=10)},
                       reco=recommendations, interactions=test)
    args.out.mkdir(parents=True, exist_ok=True)
    recommendations[[Columns.User, Columns.Item, Columns.Rank]].rename(
        columns={Columns.User: "user", Columns.Item: "item", Columns.Rank: "rank"}).to_csv(
        args.out / "recommendations.csv", index=False)
    (args.out / "peer.json").write_text(json.dumps({
        "model": args.model, "own_metrics": own, "training_seconds": round(training_seconds, 2), "steps": steps,
        "epochs": model.fit_trainer.current_epoch,
        "sequences_per_second": round(steps * args.size["batch"] / training_seconds, 1),
        "recommend_seconds": round(recommend_seconds, 2), "users": int(len(users)),
        "users_per_second": round(len(users) / recommend_seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }, indent=2))


if __name__ == "__main__":
    main()
