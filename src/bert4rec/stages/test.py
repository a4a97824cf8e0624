"""test stage: full-ranking metrics of a trained model on the held-out test split.

Writes results/<model_name>/test_metrics.json with the model's metrics and, beside them, the
most-popular baseline scored by the same code; per-user ranks (Parquet) on request.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bert4rec import dataset, metrics, modelstore, scoring, tracking
from bert4rec.config import Params
from bert4rec.fileio import atomic_file, write_json
from bert4rec.paths import ProjectPaths
from bert4rec.project import stage_main
from bert4rec.records import FIRST_ITEM

log = logging.getLogger("bert4rec.test")


def run(paths: ProjectPaths, params: Params) -> dict:
    tp = params.test
    manifest = dataset.load_manifest(paths.records)
    name = modelstore.chosen_model(paths, params, tp.model_name)
    model, info = modelstore.load_model(paths.model_dir(name), manifest)
    dataset.split_files(paths.records, manifest, "test")
    popularity = scoring.history_counts(paths.records, manifest, "test")
    out = paths.results_dir(name)
    with tracking.stage_run("test", paths, {"test": tp.model_dump(mode="json"), "model_name": name},
                            tags={"model_name": name}):
        result, baseline, per_user = scoring.evaluate(
            model, paths.records, manifest, "test", tp.batch_size, popularity,
            sampled_negatives=tp.sampled_negatives, seed=params.train_val.seed, with_baseline=True,
        )
        report = {"model_name": name, "split": "test", **result, "most_popular": baseline}
        write_json(out / "test_metrics.json", report)
        tracking.log_metrics(result)
        tracking.log_metrics({f"most_popular_{k}": v for k, v in baseline.items()})
        tracking.log_artifact(out / "test_metrics.json")
        if tp.per_user_ranks:
            users = pq.read_table(paths.user_map).to_pandas().set_index("user_index")["user_id"]
            rank = per_user["rank"]
            ids = modelstore.item_ids(paths.model_dir(name))
            known = per_user["target"] >= FIRST_ITEM
            targets = np.where(known, ids[np.maximum(per_user["target"] - FIRST_ITEM, 0)], None)
            targets = [t if k else None for t, k in zip(targets.tolist(), known)]
            table = pa.table({
                "user_id": pa.array(users.reindex(per_user["user_index"]).to_numpy()),
                "target_item_id": pa.array(targets),
                "rank": np.where(rank == metrics.MISS, -1, rank + 1),  # 1-based; -1 = target unknown
            })
            with atomic_file(out / "test_ranks.parquet") as tmp:
                pq.write_table(table, tmp)
    log.info("test %s: ndcg_at_10 %.4f hit_at_10 %.4f (most popular %.4f / %.4f) -> %s", name,
             result["ndcg_at_10"], result["hit_at_10"], baseline["ndcg_at_10"], baseline["hit_at_10"],
             out / "test_metrics.json")
    return report


def main(argv: list[str] | None = None) -> int:
    paths, params = stage_main("test", __doc__.splitlines()[0], argv)
    run(paths, params)
    return 0
