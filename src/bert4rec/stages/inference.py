"""inference stage: top-N next items per user (and user embeddings), with the original ids.

Writes results/<model_name>/predictions.parquet (user_id, rank, item_id, score; already-seen
items excluded) when inference.item_predictions, and user_embeddings.parquet (user_id,
embedding = encoder output at the [MASK] position) when inference.user_embeddings.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bert4rec import dataset, modelstore, scoring, tracking
from bert4rec.config import Params
from bert4rec.errors import UserError
from bert4rec.fileio import atomic_file
from bert4rec.paths import ProjectPaths
from bert4rec.project import stage_main
from bert4rec.records import FIRST_ITEM

log = logging.getLogger("bert4rec.inference")


def run(paths: ProjectPaths, params: Params) -> dict:
    ip = params.inference
    if not (ip.item_predictions or ip.user_embeddings):
        raise UserError("inference: both inference.item_predictions and inference.user_embeddings are false; "
                        "nothing to produce")
    manifest = dataset.load_manifest(paths.records)
    name = modelstore.chosen_model(paths, params, ip.model_name)
    folder, out = paths.model_dir(name), paths.results_dir(name)
    model, _ = modelstore.load_model(folder, manifest)
    item_ids = modelstore.item_ids(folder)
    if not paths.user_map.exists():
        raise UserError(f"{paths.user_map}: user id dictionary not found; run the raw stage")
    user_ids = pq.read_table(paths.user_map).to_pandas().set_index("user_index")["user_id"]
    with tracking.stage_run("inference", paths, {"inference": ip.model_dump(mode="json"), "model_name": name},
                            tags={"model_name": name}):
        started = time.perf_counter()
        users, tokens, scores, embeddings = scoring.predict(
            model, paths.records, manifest, "inference", ip.batch_size, ip.top_k
        )
        seconds = time.perf_counter() - started
        original_users = pa.array(user_ids.reindex(users).to_numpy())
        k = tokens.shape[1]
        report = {"model_name": name, "users": int(len(users)), "top_k": int(k), "seconds": round(seconds, 3),
                  "users_per_second": round(len(users) / seconds, 1)}
        if ip.item_predictions:
            table = pa.table({
                "user_id": original_users.take(pa.array(np.repeat(np.arange(len(users)), k))),
                "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(users)),
                "item_id": pa.array(item_ids[tokens.reshape(-1) - FIRST_ITEM]),
                "score": scores.reshape(-1).astype(np.float32),
            })
            with atomic_file(out / "predictions.parquet") as tmp:
                pq.write_table(table, tmp)
        if ip.user_embeddings:
            flat = pa.array(embeddings.reshape(-1).astype(np.float32))
            table = pa.table({
                "user_id": original_users,
                "embedding": pa.FixedSizeListArray.from_arrays(flat, embeddings.shape[1]),
            })
            with atomic_file(out / "user_embeddings.parquet") as tmp:
                pq.write_table(table, tmp)
        tracking.log_metrics({"users_per_second": report["users_per_second"]})
    log.info("inference %s: %d users, top-%d in %.1fs (%.0f users/s) -> %s", name, len(users), k, seconds,
             report["users_per_second"], out)
    return report


def main(argv: list[str] | None = None) -> int:
    paths, params = stage_main("inference", __doc__.splitlines()[0], argv)
    run(paths, params)
    return 0
