"""Per-user sequences from a stream of events, with memory bounded by the chunk of users.

Events are spilled to one scratch file in input order; each chunk of users is then read back,
sorted, cleaned and written as one Parquet row group.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bert4rec.data import readers
from bert4rec.data.timesplit import WindowCounts, Windows
from bert4rec.params import SPLITS_BY_TASK, RawParams
from bert4rec.errors import UserError
from bert4rec.fileio import atomic_file
from bert4rec.paths import ProjectPaths
from bert4rec.progress import progress

EVENT = np.dtype([("user", "<i8"), ("item", "<i8"), ("time", "<f8")])
EVENT_INT_TIME = np.dtype([("user", "<i8"), ("item", "<i8"), ("time", "<i8")])
# Original ids decode to int64 when every one is the canonical text of an int64 (no leading
# zeros, no '+', no '-0'), so they read back exactly as given; otherwise all stay text.
INT64_TEXT = r"^(0|-?[1-9][0-9]{0,18})$"
ROW_GROUP_USERS = 4096  # small chunks (raw.users_per_chunk) are written together: fewer, larger row groups


class Spill:
    """Events in input order, in one scratch file: one open file however many chunks there are.

    Each appended block is written sorted by chunk of users (users_per_chunk consecutive user
    codes, a stable sort), and an index keeps where each chunk's part of the block lies, so
    a chunk is read back from its parts in input order.
    """

    def __init__(self, path: Path, users_per_chunk: int):
        self.path = path
        self.users_per_chunk = users_per_chunk
        self.dtype: np.dtype | None = None
        self.handle = open(path, "wb")
        self.rows = 0
        self.parts: list[np.ndarray] = []  # per block: rows of (chunk, first row in the file, rows)
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
        ids, starts, counts = np.unique(chunk[order], return_index=True, return_counts=True)
        self.handle.write(rows[order].view(np.uint8))  # (ndarray.tofile loses the errno of a full disk)
        self.parts.append(np.stack([ids, starts + self.rows, counts], axis=1))
        self.rows += len(rows)

    def chunks(self) -> Iterator[np.ndarray]:
        """Each chunk's events in input order, chunk after chunk."""
        self.handle.close()
        if not self.parts:
            return
        index = np.concatenate(self.parts)
        index = index[np.lexsort((index[:, 1], index[:, 0]))]  # by chunk, then by place in the file
        with open(self.path, "rb") as handle:
            for group in np.split(index, np.flatnonzero(np.diff(index[:, 0])) + 1):
                rows = np.empty(int(group[:, 2].sum()), dtype=self.dtype)
                view, filled = rows.view(np.uint8), 0
                for _, first, count in group.tolist():
                    handle.seek(first * self.dtype.itemsize)
                    size = count * self.dtype.itemsize
                    handle.readinto(view[filled:filled + size])
                    filled += size
                yield rows

    def __enter__(self) -> "Spill":
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


def decoded_ids(values: "readers.FirstSeen") -> pa.Array:
    """Original ids, as int64 when every id is the canonical text of an int64, else text."""
    strings = values.values
    if len(strings) and pc.all(pc.match_substring_regex(strings, INT64_TEXT)).as_py():
        try:
            return pc.cast(strings, pa.int64())
        except pa.ArrowInvalid:  # 19 digits beyond the int64 range: all stay text
            pass
    return strings


SEQUENCE_COLUMNS = ("user_index", "user_id", "items")


def open_sequences(path: Path) -> pq.ParquetFile:
    """The raw stage's sequences file; missing, damaged or another file is an error naming it."""
    if not path.exists():
        raise UserError(f"{path}: sequences not found; run the raw stage first")
    try:
        source = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise UserError(f"{path}: not a readable sequences file, it may be truncated or corrupt ({error}); "
                        "rerun the raw stage") from None
    schema = source.schema_arrow
    if (not set(SEQUENCE_COLUMNS) <= set(schema.names) or not pa.types.is_integer(schema.field("user_index").type)
            or not pa.types.is_list(schema.field("items").type)):
        raise UserError(f"{path}: not a sequences file of the raw stage (expected columns user_index, user_id, "
                        f"items; found {', '.join(schema.names)}); rerun the raw stage")
    return source


def read_group(source: pq.ParquetFile, path: Path, group: int, columns: list[str]) -> pa.Table:
    try:
        return source.read_row_group(group, columns=columns)
    except (pa.ArrowException, OSError) as error:
        raise UserError(f"{path}: row group {group} cannot be read, the file may be corrupt ({error}); "
                        "rerun the raw stage") from None


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


def _chunk_table(schema: pa.Schema, index, user_ids: pa.Array, lengths, items: pa.Array, times) -> pa.Table:
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    columns = {"user_index": index, "user_id": user_ids, "items": pa.ListArray.from_arrays(offsets, items)}
    if "times" in schema.names:
        columns["times"] = pa.ListArray.from_arrays(offsets, pa.array(times, schema.field("times").type.value_type))
    return pa.table(columns, schema=schema)


def _one_table(parts: list[pa.Table]) -> pa.Table:
    """Chunks written as one row group (a single chunk as it is: no copy)."""
    return parts[0] if len(parts) == 1 else pa.concat_tables(parts).combine_chunks()


def write_sequences(
    paths: ProjectPaths, raw: RawParams, spill: Spill, user_ids: pa.Array, item_ids: pa.Array, n_items: int
) -> dict:
    """Clean each chunk and write the sequences (row groups of whole chunks, at least
    ROW_GROUP_USERS users each but the last); the user map beside them."""
    source = paths.resolve_input(raw.input)
    windows = Windows.for_split(raw, spill.time_unit, f"{source}: raw.split is time but the input has no timestamps; "
                                "name the column in raw.columns.timestamp, or use raw.split: leave_one_out")
    item_counts = np.zeros(n_items, dtype=np.int64)
    dropped, kept_users, lengths_kept, user_map_parts, pending = Dropped(), 0, [], [], []
    counts = WindowCounts(n_items)
    schema = sequences_schema(user_ids.type, item_ids.type, spill)
    with atomic_file(paths.sequences) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for rows in progress(spill.chunks(), desc="raw: sequences", unit=" chunks"):
            codes, lengths, item, times = clean_chunk(rows, raw, dropped, windows)
            if not len(codes):
                continue
            item_counts += np.bincount(item, minlength=n_items)
            if windows is not None:
                counts.add(lengths, item, times, windows)
            index = np.arange(kept_users, kept_users + len(codes), dtype=np.int32)
            kept_users += len(codes)
            chunk_user_ids = user_ids.take(pa.array(codes))
            pending.append(_chunk_table(schema, index, chunk_user_ids, lengths, item_ids.take(pa.array(item)), times))
            if kept_users - int(pending[0]["user_index"][0].as_py()) >= ROW_GROUP_USERS:
                writer.write_table(_one_table(pending))
                pending = []
            user_map_parts.append(pa.table({"user_index": index, "user_id": chunk_user_ids}))
            lengths_kept.append(lengths)
        if pending:
            writer.write_table(_one_table(pending))
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
