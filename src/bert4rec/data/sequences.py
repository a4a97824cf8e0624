"""Per-user sequences from a stream of events, with memory bounded by the chunk of users.

Events are spilled to one file per chunk of users (users_per_chunk consecutive user codes) in
input order; each chunk is then sorted, cleaned and written as one Parquet row group.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bert4rec.data import readers
from bert4rec.data.examples import SPLITS_BY_TASK
from bert4rec.data.timesplit import WindowCounts, Windows
from bert4rec.params import RawParams
from bert4rec.errors import UserError
from bert4rec.fileio import atomic_file
from bert4rec.paths import ProjectPaths
from bert4rec.progress import progress

EVENT = np.dtype([("user", "<i8"), ("item", "<i8"), ("time", "<f8")])
EVENT_INT_TIME = np.dtype([("user", "<i8"), ("item", "<i8"), ("time", "<i8")])


class Spill:
    """Per-chunk-of-users event files, appended in input order."""

    def __init__(self, folder: Path, users_per_chunk: int):
        self.folder = folder
        self.users_per_chunk = users_per_chunk
        self.dtype: np.dtype | None = None
        self.handles: dict[int, object] = {}
        self.time_unit: str | None = None  # None: the input has no timestamps
        self.span = (np.inf, -np.inf)  # first and last timestamp read

    def append(self, users: np.ndarray, items: np.ndarray, times: np.ndarray | None, unit: str | None = None) -> None:
        if self.dtype is None:
            self.dtype = EVENT_INT_TIME if times is None or times.dtype.kind in "iu" else EVENT
            self.time_unit = unit if times is not None else None
        if times is not None and len(times):
            self.span = (min(self.span[0], times.min()), max(self.span[1], times.max()))
        rows = np.empty(len(users), dtype=self.dtype)
        rows["user"], rows["item"] = users, items
        rows["time"] = 0 if times is None else times
        chunk = users // self.users_per_chunk
        order = np.argsort(chunk, kind="stable")
        rows, chunk = rows[order], chunk[order]
        ids, starts = np.unique(chunk, return_index=True)
        for chunk_id, part in zip(ids.tolist(), np.split(rows, starts[1:])):
            handle = self.handles.get(chunk_id)
            if handle is None:
                handle = self.handles[chunk_id] = open(self.folder / f"{chunk_id:06d}.bin", "wb")
            part.tofile(handle)

    def chunks(self):
        for handle in self.handles.values():
            handle.close()
        for chunk_id in sorted(self.handles):
            yield np.fromfile(self.folder / f"{chunk_id:06d}.bin", dtype=self.dtype)


def decoded_ids(values: "readers.FirstSeen") -> pa.Array:
    """Original ids, as int64 when every id is a canonical integer (lossless), else strings."""
    strings = values.values
    canonical = pc.match_substring_regex(strings, r"^(0|-?[1-9][0-9]{0,17})$")
    if len(strings) and pc.all(canonical).as_py():
        return pc.cast(strings, pa.int64())
    return strings


def sequences_schema(id_type: pa.DataType, item_type: pa.DataType, spill: Spill) -> pa.Schema:
    """user_index, user_id, items and, when the input has timestamps, times (in the input's
    numbers; the field's metadata names the unit: 's' unix seconds or numbers, 'ns' dates)."""
    fields = [pa.field("user_index", pa.int32()), pa.field("user_id", id_type), pa.field("items", pa.list_(item_type))]
    if spill.time_unit:
        kind = pa.int64() if spill.dtype["time"].kind == "i" else pa.float64()
        fields.append(pa.field("times", pa.list_(kind), metadata={"unit": spill.time_unit}))
    return pa.schema(fields)


def time_unit(schema: pa.Schema) -> str | None:
    """The unit of the sequences' times column (None: no timestamps)."""
    if "times" not in schema.names:
        return None
    return (schema.field("times").metadata or {}).get(b"unit", b"s").decode()


def percentiles(lengths: np.ndarray) -> dict:
    points = np.percentile(lengths, [25, 50, 75, 90, 99]) if len(lengths) else [0] * 5
    return {
        "min": int(lengths.min()) if len(lengths) else 0,
        **{f"p{p}": float(v) for p, v in zip((25, 50, 75, 90, 99), points)},
        "max": int(lengths.max()) if len(lengths) else 0,
        "mean": round(float(lengths.mean()), 4) if len(lengths) else 0.0,
    }


@dataclass
class Dropped:
    """What cleaning removed, for the raw summary."""

    repeats: int = 0
    short_users: int = 0
    short_events: int = 0
    outside_dates: int = 0


def clean_chunk(rows: np.ndarray, raw: RawParams, dropped: Dropped, windows: Windows | None = None):
    """One chunk's events sorted by (user, time) (ties keep input order); events outside the time
    split's dates, consecutive repeats and short histories dropped.
    Returns (user codes, their lengths, items in order, times in order)."""
    rows = rows[np.lexsort((rows["time"], rows["user"]))]
    if windows is not None:
        inside = windows.keep(rows["time"])
        dropped.outside_dates += int((~inside).sum())
        rows = rows[inside]
    if raw.drop_consecutive_repeats:
        keep = np.ones(len(rows), dtype=bool)
        keep[1:] = (rows["item"][1:] != rows["item"][:-1]) | (rows["user"][1:] != rows["user"][:-1])
        dropped.repeats += int((~keep).sum())
        rows = rows[keep]
    codes, lengths = np.unique(rows["user"], return_counts=True)
    long_enough = lengths >= raw.min_length()
    dropped.short_users += int((~long_enough).sum())
    dropped.short_events += int(lengths[~long_enough].sum())
    rows = rows[np.repeat(long_enough, lengths)]
    return codes[long_enough], lengths[long_enough], rows["item"], rows["time"]


def split_windows(raw: RawParams, spill: Spill, source: Path) -> Windows | None:
    """The time split's dates in the input's time unit (None for leave-one-out)."""
    if raw.split != "time":
        return None
    if spill.time_unit is None:
        raise UserError(f"{source}: raw.split is time but the input has no timestamps; name the column in "
                        "raw.columns.timestamp, or use raw.split: leave_one_out")
    return Windows.of(raw, spill.time_unit)


def _chunk_table(schema: pa.Schema, index, user_ids: pa.Array, lengths, items: pa.Array, times) -> pa.Table:
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    columns = {"user_index": index, "user_id": user_ids, "items": pa.ListArray.from_arrays(offsets, items)}
    if "times" in schema.names:
        columns["times"] = pa.ListArray.from_arrays(offsets, pa.array(times, schema.field("times").type.value_type))
    return pa.table(columns, schema=schema)


def write_sequences(
    paths: ProjectPaths, raw: RawParams, spill: Spill, user_ids: pa.Array, item_ids: pa.Array, n_items: int
) -> dict:
    """Clean each chunk and write it as one row group of sequences; the user map beside it."""
    source = paths.resolve_input(raw.input)
    windows = split_windows(raw, spill, source)
    item_counts = np.zeros(n_items, dtype=np.int64)
    dropped, kept_users, lengths_kept, user_map_parts = Dropped(), 0, [], []
    counts = WindowCounts(n_items)
    schema = sequences_schema(user_ids.type, item_ids.type, spill)
    with atomic_file(paths.sequences) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for rows in progress(spill.chunks(), desc="raw: sequences", unit=" chunks"):
            codes, lengths, item, times = clean_chunk(rows, raw, dropped, windows)
            if not len(codes):
                continue
            np.add.at(item_counts, item, 1)
            if windows is not None:
                counts.add(lengths, item, times, windows)
            index = np.arange(kept_users, kept_users + len(codes), dtype=np.int32)
            kept_users += len(codes)
            chunk_user_ids = user_ids.take(pa.array(codes))
            writer.write_table(_chunk_table(schema, index, chunk_user_ids, lengths, item_ids.take(pa.array(item)), times))
            user_map_parts.append(pa.table({"user_index": index, "user_id": chunk_user_ids}))
            lengths_kept.append(lengths)
        if kept_users == 0:
            outside = f", {dropped.outside_dates} events outside the split's dates" if windows else ""
            raise UserError(f"{source}: no users left after min length {raw.min_length()} "
                            f"(task {raw.task}{outside}); every history is shorter")
        if windows is not None:
            counts.check(windows, raw, str(source), spill.span, SPLITS_BY_TASK[raw.task])
    with atomic_file(paths.user_map) as tmp:
        pq.write_table(pa.concat_tables(user_map_parts), tmp)
    lengths = np.concatenate(lengths_kept)
    summary = {
        "users": kept_users,
        "items": int((item_counts > 0).sum()),
        "interactions": int(lengths.sum()),
        "dropped": {
            "consecutive_repeats": {"events": dropped.repeats},
            "short_histories": {"users": dropped.short_users, "events": dropped.short_events,
                                "min_length": raw.min_length()},
        },
        "history_length": percentiles(lengths),
    }
    if windows is not None:
        summary["dropped"]["outside_dates"] = {"events": dropped.outside_dates}
        summary["windows"] = counts.summary(windows, raw)
    return summary
