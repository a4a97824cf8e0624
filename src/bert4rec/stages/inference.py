"""inference stage: top-N next items per user (and user embeddings), with the original ids.

Writes results/<model_name>/predictions.parquet (user_id, rank, item_id, score; already-seen
items excluded) when inference.item_predictions, and user_embeddings.parquet (user_id,
embedding = encoder output at the [MASK] position) when inference.user_embeddings. Both are
written a chunk of users at a time (one Parquet row group each, in user order): memory stays
flat however many users there are.
"""

from __future__ import annotations

import contextlib
import logging
import time

import numpy as np
import pyarrow as pa

from bert4rec.data.manifest import Manifest
from bert4rec.data.records import FIRST_ITEM
from bert4rec.errors import UserError
from bert4rec.fileio import parquet_stream
from bert4rec.model import recommend, store
from bert4rec.params import Params
from bert4rec.paths import ProjectPaths
from bert4rec.stages.common import stage_main, user_ids
from bert4rec.workflow import tracking

log = logging.getLogger("bert4rec.inference")


class Outputs:
    """The two output files, each a stream of row groups."""

    def __init__(self, files: contextlib.ExitStack, paths: ProjectPaths, params: Params, item_ids, hidden: int):
        out, ip = paths.results_dir(params.model_name()), params.inference
        self.users, self.item_ids = user_ids(paths), item_ids
        self.predictions = self.embeddings = None
        if ip.item_predictions:
            schema = pa.schema([("user_id", self.users.type), ("rank", pa.int32()), ("item_id", item_ids.type),
                                ("score", pa.float32())])
            self.predictions = files.enter_context(parquet_stream(out / "predictions.parquet", schema))
        if ip.user_embeddings:
            schema = pa.schema([("user_id", self.users.type), ("embedding", pa.list_(pa.float32(), hidden))])
            self.embeddings = files.enter_context(parquet_stream(out / "user_embeddings.parquet", schema))

    def write(self, chunk: recommend.Predictions) -> None:
        if self.predictions:
            found = np.isfinite(chunk.scores)
            rows = np.repeat(np.arange(len(chunk.user_index)), found.sum(axis=1))
            ranks = np.broadcast_to(np.arange(1, chunk.tokens.shape[1] + 1, dtype=np.int32), chunk.tokens.shape)
            self.predictions(pa.table({
                "user_id": self.users.take(pa.array(chunk.user_index[rows])),
                "rank": ranks[found],
                "item_id": self.item_ids.take(pa.array(chunk.tokens[found] - FIRST_ITEM)),
                "score": chunk.scores[found].astype(np.float32),
            }))
        if self.embeddings:
            flat = pa.array(chunk.embeddings.reshape(-1).astype(np.float32))
            self.embeddings(pa.table({"user_id": self.users.take(pa.array(chunk.user_index)),
                                      "embedding": pa.FixedSizeListArray.from_arrays(flat, chunk.embeddings.shape[1])}))


def run(paths: ProjectPaths, params: Params) -> dict:
    ip, name = params.inference, params.model_name()
    if not (ip.item_predictions or ip.user_embeddings):
        raise UserError("inference: both inference.item_predictions and inference.user_embeddings are false; "
                        "nothing to produce")
    manifest = Manifest.read(paths.records)
    folder = paths.model_dir(name)
    model, info = store.load_model(folder, manifest)
    recommender = recommend.Recommender(recommend.ModelScorer(model), with_rank=False)
    with tracking.stage_run("inference", paths, params, sections=("inference",), model_name=name), \
            contextlib.ExitStack() as files:
        outputs = Outputs(files, paths, params, store.item_ids(folder), info.model.hidden_size)
        started, count = time.perf_counter(), 0
        for chunk in recommend.predict(recommender, manifest, "inference", ip.batch_size, ip.top_k):
            outputs.write(chunk)
            count += len(chunk.user_index)
        seconds = time.perf_counter() - started
        report = {"model_name": name, "users": count, "top_k": ip.top_k, "seconds": round(seconds, 3),
                  "users_per_second": round(count / max(seconds, 1e-9), 1)}
        tracking.log_metrics({"users_per_second": report["users_per_second"]})
    log.info("inference %s: %d users, top-%d in %.1fs (%.0f users/s) -> %s", name, count, ip.top_k, seconds,
             report["users_per_second"], paths.results_dir(name))
    return report


def main(argv: list[str] | None = None) -> int:
    paths, params = stage_main("inference", __doc__.splitlines()[0], argv)
    run(paths, params)
    return 0
