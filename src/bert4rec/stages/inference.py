"""inference stage: top-N next items per user (and user embeddings), with the original ids.

Writes results/<model_name>/predictions.parquet (user_id, rank, item_id, score; already-seen
items excluded) when inference.item_predictions, and user_embeddings.parquet (user_id,
embedding = encoder output at the [MASK] position) when inference.user_embeddings. Both are
written a chunk of users at a time (one Parquet row group each, in user order): memory stays
flat however many users there are. Workers listed in TF_CONFIG split the users (stages/parts.py).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bert4rec.data.manifest import Manifest
from bert4rec.data.records import FIRST_ITEM
from bert4rec.errors import UserError
from bert4rec.fileio import all_or_nothing, parquet_stream
from bert4rec.model import recommend, store
from bert4rec.model.distribute import Worker, cluster_worker
from bert4rec.params import Params
from bert4rec.paths import ProjectPaths
from bert4rec.stages import parts
from bert4rec.stages.common import stage_main, user_ids
from bert4rec.workflow import tracking

log = logging.getLogger("bert4rec.inference")


KINDS = {"predictions": "item_predictions", "user_embeddings": "user_embeddings"}  # file -> its switch


class Outputs:
    """The output files, each a stream of row groups; a worker of several writes its parts, with
    a leading user_index column for the chief's merge."""

    def __init__(self, files: contextlib.ExitStack, targets: dict[str, Path], users: pa.Array, item_ids: pa.Array,
                 hidden: int, keyed: bool):
        self.users, self.item_ids, self.keyed = users, item_ids, keyed
        self.without_candidates = 0  # users who have seen every item: no rows in predictions.parquet
        schemas = {"predictions": [("user_id", users.type), ("rank", pa.int32()), ("item_id", item_ids.type),
                                   ("score", pa.float32())],
                   "user_embeddings": [("user_id", users.type), ("embedding", pa.list_(pa.float32(), hidden))]}
        key = [("user_index", pa.int64())] if keyed else []
        self.writers = {kind: files.enter_context(parquet_stream(path, pa.schema(key + schemas[kind])))
                        for kind, path in targets.items()}

    def write(self, chunk: recommend.Predictions) -> None:
        if "predictions" in self.writers:
            found = np.isfinite(chunk.scores)
            self.without_candidates += int((~found.any(axis=1)).sum())
            rows = np.repeat(np.arange(len(chunk.user_index)), found.sum(axis=1))
            ranks = np.broadcast_to(np.arange(1, chunk.tokens.shape[1] + 1, dtype=np.int32), chunk.tokens.shape)
            self._write("predictions", chunk.user_index[rows], {
                "rank": ranks[found],
                "item_id": self.item_ids.take(pa.array(chunk.tokens[found] - FIRST_ITEM)),
                "score": chunk.scores[found].astype(np.float32)})
        if "user_embeddings" in self.writers:
            flat = pa.array(chunk.embeddings.reshape(-1).astype(np.float32))
            self._write("user_embeddings", chunk.user_index,
                        {"embedding": pa.FixedSizeListArray.from_arrays(flat, chunk.embeddings.shape[1])})

    def _write(self, kind: str, user_index: np.ndarray, columns: dict) -> None:
        key = {"user_index": user_index.astype(np.int64)} if self.keyed else {}
        self.writers[kind](pa.table({**key, "user_id": self.users.take(pa.array(user_index)), **columns}))


def merge_parts(out: Path, kinds: list[str], worker: Worker) -> None:
    """The chief: every worker's parts of each output, merged in user order into the output."""
    for kind in kinds:
        files = parts.wait_for_parts(out, kind, worker, ".parquet")
        schema = pq.read_schema(files[0])
        with parquet_stream(out / f"{kind}.parquet", schema.remove(schema.get_field_index("user_index"))) as write:
            parts.merge_sorted(files, "user_index", write)
    parts.remove_parts(out)


def remove_switched_off(out: Path, kinds: list[str]) -> None:
    """An output switched off since an earlier run would be left beside the new one, from another
    model or another run: it goes once the new outputs are in place."""
    for kind, switch in KINDS.items():
        stale = out / f"{kind}.parquet"
        if kind not in kinds and stale.exists():
            stale.unlink()
            log.info("removed %s (inference.%s is off; it was an earlier run's)", stale, switch)


def run(paths: ProjectPaths, params: Params) -> dict:
    ip, name = params.inference, params.model_name()
    kinds = [kind for kind, switch in KINDS.items() if getattr(ip, switch)]
    if not kinds:
        raise UserError("inference: both inference.item_predictions and inference.user_embeddings are false; "
                        "nothing to produce")
    manifest = Manifest.read(paths.records)
    manifest.require_params(params.tfrecord)
    folder, out = paths.model_dir(name), paths.results_dir(name)
    model, info = store.load_model(folder, manifest, params.train_val)
    recommender = recommend.Recommender(recommend.ModelScorer(model), with_rank=False)
    worker = cluster_worker()
    targets = {kind: (out / f"{kind}.parquet" if worker.count == 1 else
                      parts.part_file(out, kind, worker.index, worker.count, ".parquet")) for kind in kinds}
    with tracking.stage_run("inference", paths, params, sections=("inference",), model_name=name,
                            record=worker.chief), all_or_nothing(), contextlib.ExitStack() as files:
        outputs = Outputs(files, targets, user_ids(paths), store.item_ids(folder), info.model.hidden_size,
                          keyed=worker.count > 1)
        started, count = time.perf_counter(), 0
        for chunk in recommend.predict(recommender, manifest, "inference", ip.batch_size, ip.top_k, worker):
            outputs.write(chunk)
            count += len(chunk.user_index)
        seconds = time.perf_counter() - started
        report = {"model_name": name, "users": count, "top_k": ip.top_k, "seconds": round(seconds, 3),
                  "users_per_second": round(count / max(seconds, 1e-9), 1)}
        tracking.log_metrics({"users_per_second": report["users_per_second"]})
        if outputs.without_candidates:
            report["users_without_predictions"] = outputs.without_candidates
            tracking.log_metrics({"users_without_predictions": outputs.without_candidates})
            log.warning("%d users have seen every item of the catalogue: predictions.parquet has no rows for them",
                        outputs.without_candidates)
    if worker.count > 1 and worker.chief:
        merge_parts(out, kinds, worker)
    if worker.chief:
        remove_switched_off(out, kinds)
    log.info("inference %s: %d users%s, top-%d in %.1fs (%.0f users/s) -> %s", name, count,
             "" if worker.count == 1 else f" (worker {worker.index + 1} of {worker.count})", ip.top_k, seconds,
             report["users_per_second"], out)
    return report


def main(argv: list[str] | None = None) -> int:
    paths, params = stage_main("inference", __doc__.splitlines()[0], argv)
    run(paths, params)
    return 0
