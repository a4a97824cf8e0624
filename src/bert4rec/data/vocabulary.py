"""The item vocabulary: built once for a model, reused (never rebuilt) for test and inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bert4rec.data import readers
from bert4rec.data.sequences import open_sequences, read_group
from bert4rec.errors import UserError
from bert4rec.fileio import atomic_file
from bert4rec.data.records import FIRST_ITEM


def build_vocabulary(sequences: Path, out: Path, before: float | None = None) -> int:
    """Items by descending frequency (ties: first appearance); token = rank + 2.

    before: count only the events before this time (a time split's validation_start, in the
    sequences' time unit), so items first seen later are unknown to the model.
    """
    source = open_sequences(sequences)
    seen = readers.FirstSeen(source.schema_arrow.field("items").type.value_type)
    counts = np.zeros(0, dtype=np.int64)
    for group in range(source.num_row_groups):
        table = read_group(source, sequences, group, ["items"] + (["times"] if before is not None else []))
        flat = table.column("items").combine_chunks().flatten()
        if before is not None:
            flat = flat.filter(pa.array(table.column("times").combine_chunks().flatten().to_numpy() < before))
        codes = readers.first_seen_codes(pa.chunked_array([flat]), seen)
        counts = np.concatenate([counts, np.zeros(len(seen) - len(counts), dtype=np.int64)])
        counts += np.bincount(codes, minlength=len(counts))
    order = np.argsort(-counts, kind="stable")
    ids = seen.values.take(pa.array(order))
    table = pa.table(
        {
            "token": np.arange(FIRST_ITEM, FIRST_ITEM + len(order), dtype=np.int32),
            "item_id": ids,
            "count": counts[order],
        }
    )
    with atomic_file(out) as tmp:
        pq.write_table(table, tmp)
    return len(order)


def _read_vocabulary(path: Path, column: str) -> pa.Array:
    if not path.exists():
        raise UserError(
            f"{path}: no saved item vocabulary; the tfrecord stage writes it when raw.task is train_val_test "
            "or train_val (rerun it); for a test or inference task copy references/items.parquet and "
            "models/<model_name>/ from the project that trained the model (README: Model stages)"
        )
    try:
        return pq.read_table(path, columns=[column]).column(column).combine_chunks()
    except (pa.ArrowException, OSError, KeyError) as error:
        raise UserError(f"{path}: not a readable item vocabulary, it may be corrupt ({error}); rerun the stage "
                        "that wrote it (tfrecord with a training task)") from None


def load_vocabulary(path: Path) -> pa.Array:
    """Item ids in token order (token = position + 2)."""
    return _read_vocabulary(path, "item_id")


def item_counts(path: Path) -> np.ndarray:
    """Training interactions per item, in token order (the popularity baseline and sampler)."""
    return _read_vocabulary(path, "count").to_numpy()


def tokens_of(items: pa.ChunkedArray, vocab: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Flat tokens (-1 = unknown to the vocabulary) and per-user offsets."""
    lists = items.combine_chunks()
    offsets = lists.offsets.to_numpy().astype(np.int64)
    flat = lists.flatten()
    if flat.type != vocab.type:  # e.g. integer ids in the vocabulary, string ids in new data
        flat, vocab = pc.cast(flat, pa.string()), pc.cast(vocab, pa.string())
    codes = pc.index_in(flat, value_set=vocab).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.where(codes >= 0, codes + FIRST_ITEM, -1), offsets
