"""Several workers splitting the test or inference stage (TF_CONFIG lists them): each scores its
own shards and writes its part under results/<model>/parts/; the chief waits for every part,
merges them (metrics exactly, per-user rows in user order, streaming) and removes the parts.
The results folder must be storage every worker writes to (a shared mount), or the parts must be
copied to the chief's results/<model>/parts/ while it waits.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bert4rec.errors import UserError
from bert4rec.fileio import atomic_file
from bert4rec.model.distribute import Worker
from bert4rec.model.metrics import Evaluation

log = logging.getLogger("bert4rec.parts")
WAIT_SECONDS = 2 * 3600  # how long the chief waits for the other workers' parts


def part_file(out: Path, kind: str, index: int, workers: int, suffix: str) -> Path:
    return out / "parts" / f"{kind}-{index + 1}-of-{workers}{suffix}"


def wait_for_parts(out: Path, kind: str, worker: Worker, suffix: str, timeout: float = WAIT_SECONDS) -> list[Path]:
    """Every worker's part of `kind`, once all exist (written atomically, so complete)."""
    files = [part_file(out, kind, i, worker.count, suffix) for i in range(worker.count)]
    started, reported = time.monotonic(), 0.0
    while missing := [f for f in files if not f.exists()]:
        waited = time.monotonic() - started
        if waited > timeout:
            raise UserError(f"{missing[0]}: part of worker {files.index(missing[0]) + 1} did not arrive within "
                            f"{timeout:.0f} s; {len(missing)} of {len(files)} parts missing")
        if waited - reported >= 60:
            log.info("waiting for %d of %d parts: %s", len(missing), len(files), ", ".join(f.name for f in missing))
            reported = waited
        time.sleep(1)
    return files


def remove_parts(out: Path) -> None:
    shutil.rmtree(out / "parts", ignore_errors=True)


def share_evaluations(out: Path, kind: str, worker: Worker, results: dict[str, Evaluation]) -> dict[str, Evaluation] | None:
    """Write this worker's evaluations; the chief gets everyone's merged, the others None."""
    with atomic_file(part_file(out, kind, worker.index, worker.count, ".npz")) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **{f"{name}/{key}": value for name, evaluation in results.items()
                            for key, value in evaluation.to_arrays().items()})
    if not worker.chief:
        return None
    merged = {name: Evaluation(results[name].num_tokens) for name in results}
    for path in wait_for_parts(out, kind, worker, ".npz"):
        with np.load(path, allow_pickle=False) as data:
            for name in merged:
                part = {key.split("/", 1)[1]: data[key] for key in data.files if key.startswith(name + "/")}
                merged[name].merge(Evaluation.from_arrays(part))
    return merged


def merge_sorted(parts: list[Path], key: str, write: Callable[[pa.Table], None]) -> None:
    """Parquet parts each sorted by `key` -> one stream of tables sorted by `key` (the key column
    dropped), a row group at a time from each part: memory is a few row groups."""
    readers = [iter(pq.ParquetFile(path).iter_batches()) for path in parts]
    buffers: list[pa.Table | None] = [None] * len(readers)
    while True:
        for i, reader in enumerate(readers):
            while buffers[i] is not None and buffers[i].num_rows == 0 or buffers[i] is None and reader is not None:
                batch = next(reader, None)
                if batch is None:
                    readers[i], buffers[i] = None, None
                    break
                buffers[i] = pa.Table.from_batches([batch])
        alive = [b for b in buffers if b is not None]
        if not alive:
            return
        frontier = min(b.column(key)[-1].as_py() for b in alive)
        ready = []
        for i, table in enumerate(buffers):
            if table is not None:
                cut = int(pc.sum(pc.less_equal(table.column(key), frontier)).as_py() or 0)
                ready.append(table.slice(0, cut))
                buffers[i] = table.slice(cut)
        merged = pa.concat_tables(ready)
        order = pc.sort_indices(merged, sort_keys=[(key, "ascending")])  # stable
        write(merged.take(order).drop_columns([key]))
