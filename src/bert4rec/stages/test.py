"""test stage: full-ranking metrics of a trained model on the held-out test split.

Writes results/<model_name>/test_metrics.json with the model's metrics and, beside them, two
baselines scored by the same code: most-popular and first-order item-to-item transitions (both
counted from the test inputs); per-user ranks (Parquet) on request. Workers listed in
TF_CONFIG split the users; their ranks merge exactly (stages/parts.py).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bert4rec.data.manifest import Manifest
from bert4rec.data.records import FIRST_ITEM
from bert4rec.fileio import all_or_nothing, atomic_file, write_json
from bert4rec.model import metrics, recommend, store, transitions
from bert4rec.model.distribute import cluster_worker
from bert4rec.params import Params
from bert4rec.paths import ProjectPaths
from bert4rec.stages import parts
from bert4rec.stages.common import stage_main, user_ids
from bert4rec.workflow import tracking

log = logging.getLogger("bert4rec.test")
BASELINES = ("most_popular", "item_to_item")


def run(paths: ProjectPaths, params: Params) -> dict:
    tp, name = params.test, params.model_name()
    manifest = Manifest.read(paths.records)
    manifest.require_params(params.tfrecord)
    folder, out = paths.model_dir(name), paths.results_dir(name)
    model, _ = store.load_model(folder, manifest, params.train_val)
    manifest.shard_files("test")
    popularity = recommend.history_popularity(manifest, "test")
    counted = transitions.count_transitions(manifest, "test", popularity)
    recommenders = {"model": recommend.Recommender(recommend.ModelScorer(model)),
                    "most_popular": recommend.PopularityRecommender(popularity),
                    "item_to_item": transitions.TransitionRecommender(counted, popularity)}
    worker = cluster_worker()
    sampling = recommend.Sampling(tp.sampled_negatives, popularity, params.train_val.seed + worker.index)
    with tracking.stage_run("test", paths, params, sections=("test",), model_name=name, record=worker.chief), \
            all_or_nothing():
        started = time.perf_counter()
        results = recommend.evaluate(recommenders, manifest, "test", tp.batch_size, sampling, worker)
        seconds = time.perf_counter() - started
        if worker.count > 1:
            results = parts.share_evaluations(out, "test", worker, results)
            if results is None:  # another worker than the chief: its part is written
                log.info("test %s: worker %d of %d wrote its part", name, worker.index + 1, worker.count)
                return {"model_name": name, "worker": worker.index}
            parts.remove_parts(out)
        result = results["model"].result()
        baselines = {baseline: results[baseline].result() for baseline in BASELINES}
        report = {"model_name": name, "split": "test", **result, **baselines}
        write_json(out / "test_metrics.json", report)
        tracking.log_metrics(result)
        tracking.log_metrics({f"{b}_{k}": v for b, values in baselines.items() for k, v in values.items()})
        tracking.log_artifact(out / "test_metrics.json")
        if tp.per_user_ranks:
            write_ranks(paths, folder, results["model"].per_user(), out / "test_ranks.parquet")
    popular, item_to_item = baselines["most_popular"], baselines["item_to_item"]
    log.info("test %s: ndcg_at_10 %.4f hit_at_10 %.4f (most popular %.4f / %.4f, item-to-item %.4f / %.4f); "
             "%d users scored in %.1f s (%.0f users/s) -> %s", name, result["ndcg_at_10"], result["hit_at_10"],
             popular["ndcg_at_10"], popular["hit_at_10"], item_to_item["ndcg_at_10"], item_to_item["hit_at_10"],
             result["users"], seconds, result["users"] / max(seconds, 1e-9), out / "test_metrics.json")
    return report


def write_ranks(paths: ProjectPaths, folder, per_user: dict, path) -> None:
    """user_id, target_item_id and the 1-based rank (-1: the target is unknown to the vocabulary)."""
    rank, known = per_user["rank"], per_user["target"] >= FIRST_ITEM
    targets = store.item_ids(folder).take(pa.array(np.maximum(per_user["target"] - FIRST_ITEM, 0)))
    table = pa.table({
        "user_id": user_ids(paths).take(pa.array(per_user["user_index"])),
        "target_item_id": pc.if_else(pa.array(known), targets, pa.scalar(None, targets.type)),
        "rank": np.where(rank == metrics.MISS, -1, rank + 1),
    })
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)


def main(argv: list[str] | None = None) -> int:
    paths, params = stage_main("test", __doc__.splitlines()[0], argv)
    run(paths, params)
    return 0
