"""Read every supported input format as a stream of (user, item, timestamp) Arrow tables.

Formats: BERT4Rec/SASRec "user item" lines; event logs (CSV/TSV/Parquet/MovieLens `.dat`);
a Parquet sequence table (user + list of items); the predecessor's pickle (opt-in only).
Chunks come out in input order, so a stable sort later keeps timestamp ties in input order.
"""

from __future__ import annotations

import bz2
import gzip
import logging
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from bert4rec.params import Columns, RawParams
from bert4rec.errors import UserError

log = logging.getLogger(__name__)

BLOCK_BYTES = 2 << 20  # Arrow reads ahead many blocks: small blocks keep that memory small
ROWS_PER_TABLE = 1 << 20  # blocks are grouped into tables of about this many rows
USER_NAMES = ("userid", "user", "uid", "customerid", "visitorid", "sessionid", "clientid")
ITEM_NAMES = ("itemid", "item", "movieid", "productid", "iid", "articleid", "trackid", "sku")
TIME_NAMES = ("timestamp", "time", "ts", "datetime", "date", "eventtime", "unixtime")
ITEMS_NAMES = ("items", "itemids", "sequence", "history", "movieids")


@dataclass(frozen=True)
class Layout:
    """How a delimited text file is laid out; found by `sniff` or given in params."""

    format: str  # sequence_lines | events
    delimiter: str
    header: bool
    names: list[str]
    user: str
    item: str
    timestamp: str | None


def _base_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in (".gz", ".bz2", ".gzip"):
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _open_text(path: Path):
    suffix = path.suffix.lower()
    if suffix in (".gz", ".gzip"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    if suffix == ".bz2":
        return bz2.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _head_lines(path: Path, count: int = 20) -> list[str]:
    try:
        with _open_text(path) as handle:
            lines = []
            for line in handle:
                if line.strip():
                    lines.append(line.rstrip("\r\n"))
                if len(lines) >= count:
                    break
            return lines
    except (OSError, EOFError, zlib.error) as error:
        raise UserError(f"{path}: cannot read the file ({error})") from None


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _find(names: list[str], wanted: str | int | None, candidates: tuple, role: str, path: Path):
    if isinstance(wanted, int):
        if not 0 <= wanted < len(names):
            raise UserError(f"{path}: raw.columns.{role} = {wanted}, but the file has {len(names)} columns")
        return names[wanted]
    if isinstance(wanted, str):
        if wanted not in names:
            raise UserError(f"{path}: no column '{wanted}' (raw.columns.{role}); columns are {names}")
        return wanted
    by_norm = {_normalise(n): n for n in names}
    for candidate in candidates:
        if candidate in by_norm:
            return by_norm[candidate]
    return None


def _split(line: str, delimiter: str) -> list[str]:
    return line.split(delimiter)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def sniff(path: Path, params: RawParams) -> Layout:
    """Decide delimiter, header and columns from the first lines of a text file."""
    lines = _head_lines(path)
    if not lines:
        raise UserError(f"{path}: the file is empty; expected interactions (user, item[, timestamp])")
    first = lines[0]
    delimiter = params.separator
    if delimiter is None:
        for candidate in ("::", "\t", ",", ";", "|", " "):
            if candidate in first:
                delimiter = candidate
                break
        else:
            raise UserError(f"{path}: cannot tell the column separator from line 1 {first!r}; set raw.separator")
    fields = _split(first, delimiter)
    cols: Columns = params.columns
    header = params.header
    if header is None:
        known = {*USER_NAMES, *ITEM_NAMES, *TIME_NAMES}
        header = any(_normalise(f) in known for f in fields) or (
            len(lines) > 1
            and not any(_is_number(f) for f in fields)
            and any(_is_number(f) for f in _split(lines[1], delimiter))
        )
    if header:
        names = [f.strip().strip("\"'") for f in fields]
        if len(set(names)) != len(names):
            raise UserError(f"{path}: duplicate column names in the header {names}")
        if len(lines) == 1:
            raise UserError(f"{path}: the file has a header but no rows; expected interactions")
    else:
        names = [f"column_{i}" for i in range(len(fields))]
    user = _find(names, cols.user, USER_NAMES, "user", path)
    item = _find(names, cols.item, ITEM_NAMES, "item", path)
    timestamp = _find(names, cols.timestamp, TIME_NAMES, "timestamp", path)
    if not header:
        user = user or names[0]
        if item is None and len(names) > 1:
            item = names[1]
        if timestamp is None and cols.timestamp is None and len(names) >= 3:
            timestamp = _guess_headerless_time(lines, delimiter, len(names))
    if user is None:
        raise UserError(f"{path}: no user column found among {names}; set raw.columns.user")
    if item is None:
        raise UserError(f"{path}: no item column found among {names}; set raw.columns.item")
    fmt = params.format
    if fmt == "auto":
        fmt = "sequence_lines" if (len(names) == 2 and delimiter == " " and not header) else "events"
    return Layout(fmt, delimiter, header, names, user, item, timestamp)


def _guess_headerless_time(lines: list[str], delimiter: str, width: int) -> str | None:
    """MovieLens-style `user item rating timestamp`: the last column, if it holds unix seconds."""
    values = [_split(line, delimiter)[-1] for line in lines]
    if all(v.strip().isdigit() and int(v) > 10**8 for v in values):
        return f"column_{width - 1}"
    return None


def _csv_tables(path: Path, layout: Layout) -> Iterator[pa.Table]:
    """Stream a delimited file in blocks; '::' is read as ':' with the empty fields skipped."""
    double_colon = layout.delimiter == "::"
    delimiter = ":" if double_colon else layout.delimiter
    width = len(layout.names)
    physical = [f"_{i}" for i in range(2 * width - 1)] if double_colon else list(layout.names)
    rename = {physical[2 * i] if double_colon else physical[i]: name for i, name in enumerate(layout.names)}
    keep = [layout.user, layout.item] + ([layout.timestamp] if layout.timestamp else [])
    inverse = {v: k for k, v in rename.items()}
    types = {inverse[layout.user]: pa.string(), inverse[layout.item]: pa.string()}
    read = pacsv.ReadOptions(
        column_names=physical, skip_rows=1 if layout.header else 0, block_size=BLOCK_BYTES
    )
    parse = pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if delimiter in ",;" else False)
    convert = pacsv.ConvertOptions(
        column_types=types,
        include_columns=[inverse[k] for k in keep],
        strings_can_be_null=False,
    )
    try:
        stream = pa.input_stream(str(path), compression="detect")
        reader = pacsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert)
        pending, rows = [], 0
        for batch in reader:
            pending.append(batch)
            rows += batch.num_rows
            if rows >= ROWS_PER_TABLE:
                yield _standardise(_renamed(pending, rename), layout.user, layout.item, layout.timestamp, path)
                pending, rows = [], 0
        if pending:
            yield _standardise(_renamed(pending, rename), layout.user, layout.item, layout.timestamp, path)
    except pa.ArrowInvalid as error:
        raise UserError(_describe_parse_error(path, layout, error)) from None
    except (OSError, EOFError, zlib.error) as error:
        raise UserError(f"{path}: cannot read the file, it may be truncated or corrupt ({error})") from None


def _renamed(batches: list[pa.RecordBatch], rename: dict[str, str]) -> pa.Table:
    table = pa.Table.from_batches(batches)
    return table.rename_columns([rename[name] for name in table.column_names])


def _describe_parse_error(path: Path, layout: Layout, error: Exception) -> str:
    expected = len(layout.names)
    delimiter = layout.delimiter
    try:
        with _open_text(path) as handle:
            for number, line in enumerate(handle, start=1):
                if number == 1 and layout.header:
                    continue
                line = line.rstrip("\r\n")
                if len(_split(line, delimiter)) != expected:
                    return (
                        f"{path}: malformed line {number}: {line[:80]!r}; expected {expected} "
                        f"fields separated by {delimiter!r}"
                    )
    except (OSError, EOFError, zlib.error) as read_error:
        return f"{path}: cannot read the file, it may be truncated or corrupt ({read_error})"
    return f"{path}: cannot parse the file ({error})"


def _standardise(table: pa.Table, user: str, item: str, timestamp: str | None, path: Path) -> pa.Table:
    columns = {"user": _ids(table.column(user), user, path), "item": _ids(table.column(item), item, path)}
    if timestamp:
        columns["timestamp"] = _times(table.column(timestamp), timestamp, path)
    return pa.table(columns)


def _ids(column: pa.ChunkedArray, name: str, path: Path) -> pa.ChunkedArray:
    if pa.types.is_floating(column.type):
        if pc.any(pc.is_nan(column)).as_py():
            raise UserError(f"{path}: column '{name}' has missing (NaN) ids")
        column = pc.cast(column, pa.int64())
    if not (pa.types.is_integer(column.type) or pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = pc.cast(column, pa.string())
    if column.null_count:
        raise UserError(f"{path}: column '{name}' has missing (null) ids")
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        stripped = pc.utf8_trim_whitespace(column)
        empty = pc.or_(pc.equal(stripped, ""), pc.is_in(pc.utf8_lower(stripped), pa.array(["nan", "null", "none"])))
        if pc.any(empty).as_py():
            raise UserError(f"{path}: column '{name}' has empty or NaN ids")
        column = stripped
    return pc.cast(column, pa.string())


def _times(column: pa.ChunkedArray, name: str, path: Path) -> pa.ChunkedArray:
    """Numbers stay numbers (unix seconds for a time split); dates and date strings become
    timestamp[ns] (see event_times)."""
    if column.null_count:
        raise UserError(f"{path}: column '{name}' has missing timestamps")
    kind = column.type
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        return pc.cast(column, pa.timestamp("ns"))
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return pc.cast(column, pa.float64()) if pa.types.is_floating(kind) else pc.cast(column, pa.int64())
    try:
        return pc.cast(column, pa.timestamp("ns"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise UserError(f"{path}: column '{name}' is not a timestamp (numbers or dates expected)") from None


def event_times(table: pa.Table) -> tuple[np.ndarray | None, str | None]:
    """A table's timestamps as numbers and their unit: 'ns' for dates, 's' for numbers."""
    if "timestamp" not in table.column_names:
        return None, None
    column = table.column("timestamp")
    if pa.types.is_timestamp(column.type):
        return pc.cast(column, pa.int64()).to_numpy(), "ns"
    return column.to_numpy(), "s"


def _parquet_tables(path: Path, params: RawParams) -> Iterator[pa.Table]:
    try:
        source = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise UserError(f"{path}: not a readable Parquet file ({error})") from None
    schema = source.schema_arrow
    names = list(schema.names)
    if source.metadata.num_rows == 0:
        raise UserError(f"{path}: the file has no rows; expected interactions")
    cols = params.columns
    list_cols = [n for n in names if pa.types.is_list(schema.field(n).type) or pa.types.is_large_list(schema.field(n).type)]
    user = _find(names, cols.user, USER_NAMES, "user", path)
    if user is None:
        raise UserError(f"{path}: no user column found among {names}; set raw.columns.user")
    table_format = params.format if params.format != "auto" else ("sequence_table" if list_cols else "events")
    if table_format == "sequence_table":
        items = _find(names, cols.items, ITEMS_NAMES, "items", path) or (list_cols[0] if len(list_cols) == 1 else None)
        if items is None:
            raise UserError(f"{path}: no list-of-items column found among {names}; set raw.columns.items")
        for batch in source.iter_batches(batch_size=65536, columns=[user, items]):
            yield _explode(pa.Table.from_batches([batch]), user, items, path)
        return
    item = _find(names, cols.item, ITEM_NAMES, "item", path)
    if item is None:
        raise UserError(f"{path}: no item column found among {names}; set raw.columns.item")
    timestamp = _find(names, cols.timestamp, TIME_NAMES, "timestamp", path)
    wanted = [user, item] + ([timestamp] if timestamp else [])
    for batch in source.iter_batches(batch_size=1 << 20, columns=wanted):
        yield _standardise(pa.Table.from_batches([batch]), user, item, timestamp, path)


def _explode(table: pa.Table, user: str, items: str, path: Path) -> pa.Table:
    lists = table.column(items).combine_chunks()
    if lists.null_count:
        raise UserError(f"{path}: column '{items}' has missing item lists")
    parents = pc.list_parent_indices(lists)
    flat = pa.table({"user": table.column(user).take(parents), "item": pc.list_flatten(lists)})
    return _standardise(flat, "user", "item", None, path)


def _pickle_tables(path: Path, params: RawParams) -> Iterator[pa.Table]:
    if not params.allow_pickle:
        raise UserError(
            f"{path}: pickle input is disabled because loading a pickle runs code from the file; "
            "set raw.allow_pickle: true only for files you trust"
        )
    import pandas as pd

    log.warning("Loading pickle %s: unpickling runs code from the file; only do this for files you trust", path)
    frame = pd.read_pickle(path)  # opt-in via raw.allow_pickle
    if not isinstance(frame, pd.DataFrame):
        raise UserError(f"{path}: the pickle holds a {type(frame).__name__}, expected a pandas DataFrame")
    frame = frame.reset_index() if frame.index.name else frame
    yield from _table_events(pa.Table.from_pandas(frame, preserve_index=False), params, path)


def _table_events(table: pa.Table, params: RawParams, path: Path) -> Iterator[pa.Table]:
    names = list(table.column_names)
    cols = params.columns
    user = _find(names, cols.user, USER_NAMES, "user", path)
    if user is None:
        raise UserError(f"{path}: no user column found among {names}; set raw.columns.user")
    list_cols = [n for n in names if pa.types.is_list(table.schema.field(n).type)]
    if list_cols:
        items = _find(names, cols.items, ITEMS_NAMES, "items", path) or list_cols[0]
        yield _explode(table, user, items, path)
        return
    item = _find(names, cols.item, ITEM_NAMES, "item", path)
    if item is None:
        raise UserError(f"{path}: no item column found among {names}; set raw.columns.item")
    timestamp = _find(names, cols.timestamp, TIME_NAMES, "timestamp", path)
    yield _standardise(table, user, item, timestamp, path)


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
    layout = sniff(path, params)
    description = (
        f"{layout.format}: separator {layout.delimiter!r}, header {layout.header}, "
        f"user={layout.user!r} item={layout.item!r} timestamp={layout.timestamp!r}"
    )
    return description, _csv_tables(path, layout)


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
