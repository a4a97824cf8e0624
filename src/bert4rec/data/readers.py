"""Read every supported input format as a stream of (user, item, timestamp) Arrow tables.

Formats: BERT4Rec/SASRec "user item" lines; event logs (CSV/TSV/Parquet/MovieLens `.dat`);
a Parquet sequence table (user + list of items); the predecessor's pickle (opt-in only).
Chunks come out in input order, so a stable sort later keeps timestamp ties in input order.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bert4rec.data import columns, delimited
from bert4rec.errors import UserError
from bert4rec.params import RawParams

log = logging.getLogger(__name__)

PARQUET_BATCH_ROWS = 1 << 20
SEQUENCE_BATCH_ROWS = 65536


def _base_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in (".gz", ".bz2", ".gzip"):
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _is_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind)


def _parquet_file(path: Path) -> pq.ParquetFile:
    try:
        source = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise UserError(f"{path}: not a readable Parquet file ({error})") from None
    if source.metadata.num_rows == 0:
        raise UserError(f"{path}: the file has no rows; expected interactions")
    return source


def event_times(table: pa.Table) -> tuple[np.ndarray | None, str | None]:
    """A table's timestamps as numbers and their unit: 'ns' for dates, 's' for numbers."""
    if "timestamp" not in table.column_names:
        return None, None
    column = table.column("timestamp")
    if pa.types.is_timestamp(column.type):
        return pc.cast(column, pa.int64()).to_numpy(), "ns"
    return column.to_numpy(), "s"


def _parquet_tables(path: Path, params: RawParams) -> Iterator[pa.Table]:
    source = _parquet_file(path)
    schema = source.schema_arrow
    names, cols = list(schema.names), params.columns
    if len(set(names)) != len(names):
        raise UserError(f"{path}: duplicate column names {sorted({n for n in names if names.count(n) > 1})}; "
                        "expected each column once")
    list_cols = [n for n in names if _is_list(schema.field(n).type)]
    user = columns.find(names, cols.user, columns.USER_NAMES, "user", path)
    if user is None:
        raise UserError(f"{path}: no user column found among {names}; set raw.columns.user")
    table_format = params.format if params.format != "auto" else _table_format(names, list_cols, params, path)
    if table_format == "sequence_table":
        items = columns.find(names, cols.items, columns.ITEMS_NAMES, "items", path) or (
            list_cols[0] if len(list_cols) == 1 else None)
        if items is None:
            raise UserError(f"{path}: no list-of-items column found among {names}; set raw.columns.items")
        columns.require_distinct(path, user=user, items=items)
        batches = _batches(source, path, [user, items], SEQUENCE_BATCH_ROWS)
        yield from (_explode(table, user, items, path, first_row) for table, first_row in batches)
        return
    item = columns.find(names, cols.item, columns.ITEM_NAMES, "item", path)
    if item is None:
        raise UserError(f"{path}: no item column found among {names}; set raw.columns.item")
    timestamp = columns.find(names, cols.timestamp, columns.TIME_NAMES, "timestamp", path)
    columns.require_distinct(path, user=user, item=item, timestamp=timestamp)
    wanted = [user, item] + ([timestamp] if timestamp else [])
    for table, first_row in _batches(source, path, wanted, PARQUET_BATCH_ROWS):
        yield columns.standardise(table, user, item, timestamp, path, first_row)


def _table_format(names: list[str], list_cols: list[str], params: RawParams, path: Path) -> str:
    """A table with a list column is a sequence table, unless it has an item column and its list
    columns are not named as items (an event log with, e.g., a list of tags per event)."""
    if not list_cols:
        return "events"
    cols = params.columns
    items = columns.find(names, cols.items, columns.ITEMS_NAMES, "items", path)
    item = columns.find(names, cols.item, columns.ITEM_NAMES, "item", path)
    return "events" if item is not None and items is None else "sequence_table"


def _batches(source: pq.ParquetFile, path: Path, wanted: list[str], rows: int) -> Iterator[tuple[pa.Table, int]]:
    """(table, index of its first row) a batch at a time; a damaged file is an error naming it."""
    first_row = 0
    batches = source.iter_batches(batch_size=rows, columns=wanted)
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as error:
            raise UserError(f"{path}: cannot read the Parquet file after row {first_row}, it may be truncated "
                            f"or corrupt ({error})") from None
        if batch is None:
            return
        yield pa.Table.from_batches([batch]), first_row
        first_row += batch.num_rows


def _explode(table: pa.Table, user: str, items: str, path: Path, first_row: int | None) -> pa.Table:
    """A sequence table (one row per user, a list of items) as one event per item."""
    kind = table.schema.field(items).type
    if not _is_list(kind):
        raise UserError(f"{path}: column '{items}' holds {kind} values; expected a list of item ids per user")
    if pa.types.is_nested(kind.value_type):
        raise UserError(f"{path}: column '{items}' holds lists of lists ({kind}); expected one flat "
                        "list of item ids per user")
    lists = table.column(items).combine_chunks()
    if lists.null_count:
        where = f" (row {first_row + pc.index(lists.is_null(), True).as_py() + 1})" if first_row is not None else ""
        raise UserError(f"{path}: column '{items}' has missing item lists{where}")
    parents = pc.list_parent_indices(lists)
    user_ids = columns.ids(table.column(user), user, path, first_row)
    item_ids = columns.ids(pa.chunked_array([pc.list_flatten(lists)]), items, path)
    return pa.table({"user": user_ids.take(parents), "item": item_ids})


def _pickle_tables(path: Path, params: RawParams) -> Iterator[pa.Table]:
    if not params.allow_pickle:
        raise UserError(
            f"{path}: pickle input is disabled because loading a pickle runs code from the file; "
            "set raw.allow_pickle: true only for files you trust"
        )
    import pandas as pd

    log.warning("Loading pickle %s: unpickling runs code from the file; only do this for files you trust", path)
    try:
        frame = pd.read_pickle(path)  # opt-in via raw.allow_pickle
    except Exception as error:  # unpickling can fail in any way the file's contents choose
        detail = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        raise UserError(f"{path}: not a readable pickle, it may be truncated or corrupt ({detail})") from None
    if not isinstance(frame, pd.DataFrame):
        raise UserError(f"{path}: the pickle holds a {type(frame).__name__}, expected a pandas DataFrame")
    frame = frame.reset_index() if frame.index.name else frame
    try:
        table = pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowException, TypeError, ValueError) as error:
        raise UserError(f"{path}: the pickled DataFrame cannot be read as columns ({error})") from None
    yield from _table_events(table, params, path)


def _table_events(table: pa.Table, params: RawParams, path: Path) -> Iterator[pa.Table]:
    names = [str(name) for name in table.column_names]
    table = table.rename_columns(names)
    cols = params.columns
    user = columns.find(names, cols.user, columns.USER_NAMES, "user", path)
    if user is None:
        raise UserError(f"{path}: no user column found among {names}; set raw.columns.user")
    list_cols = [n for n in names if _is_list(table.schema.field(n).type)]
    if _table_format(names, list_cols, params, path) == "sequence_table":
        items = columns.find(names, cols.items, columns.ITEMS_NAMES, "items", path) or list_cols[0]
        columns.require_distinct(path, user=user, items=items)
        yield _explode(table, user, items, path, 0)
        return
    item = columns.find(names, cols.item, columns.ITEM_NAMES, "item", path)
    if item is None:
        raise UserError(f"{path}: no item column found among {names}; set raw.columns.item")
    timestamp = columns.find(names, cols.timestamp, columns.TIME_NAMES, "timestamp", path)
    columns.require_distinct(path, user=user, item=item, timestamp=timestamp)
    yield columns.standardise(table, user, item, timestamp, path, 0)


def read_events(path: Path, params: RawParams) -> tuple[str, Iterator[pa.Table]]:
    """Return (format description, stream of tables with columns user, item[, timestamp])."""
    if not path.exists():
        raise UserError(f"{path}: input file not found (raw.input)")
    if path.is_dir():
        raise UserError(f"{path}: raw.input is a folder, expected a file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty; expected interactions (user, item[, timestamp])")
    suffix = _base_suffix(path)
    if params.format == "pickle" or suffix in (".pkl", ".pickle"):
        return "pickle", _pickle_tables(path, params)
    if suffix == ".parquet" or params.format == "sequence_table":
        return "parquet", _parquet_tables(path, params)
    if suffix not in (".txt", ".csv", ".tsv", ".dat", ".data", ".inter", ".log", ""):
        raise UserError(
            f"{path}: unknown input format '{suffix}'; expected .txt/.csv/.tsv/.dat (optionally .gz), "
            ".parquet, or .pkl with raw.allow_pickle"
        )
    layout = delimited.sniff(path, params)
    description = (
        f"{layout.format}: separator {layout.delimiter!r}, header {layout.header}, "
        f"user={layout.user!r} item={layout.item!r} timestamp={layout.timestamp!r}"
    )
    return description, delimited.tables(path, layout)


def first_seen_codes(values: pa.ChunkedArray, known: "FirstSeen") -> np.ndarray:
    encoded = pc.dictionary_encode(values).combine_chunks()
    mapping = known.add(encoded.dictionary)
    return mapping[encoded.indices.to_numpy()]


class FirstSeen:
    """Dense codes 0..N-1 in order of first appearance across a stream of chunks.

    Known values live in one Arrow array (a few bytes per id, no Python object per id), so a
    million users cost megabytes, not hundreds of megabytes.
    """

    def __init__(self, kind: pa.DataType = pa.string()) -> None:
        self.values = pa.array([], type=kind)

    def add(self, uniques: pa.Array) -> np.ndarray:
        """Codes of distinct `uniques`; unseen ones are appended in the order given."""
        found = pc.index_in(uniques, value_set=self.values)
        new = found.is_null().to_numpy(zero_copy_only=False)
        codes = found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        if new.any():
            start = len(self.values)
            self.values = pa.concat_arrays([self.values, uniques.filter(pa.array(new))])
            codes[new] = np.arange(start, len(self.values))
        return codes

    def __len__(self) -> int:
        return len(self.values)
