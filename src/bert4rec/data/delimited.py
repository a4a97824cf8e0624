"""Delimited text inputs (CSV/TSV, MovieLens `.dat`, BERT4Rec "user item" lines): the layout,
found from the first lines or given in params, and a block-wise Arrow reader.

Rules: a UTF-8 byte-order mark is ignored; blank lines and '#' comment lines before the first
row (header or data) are skipped; fields of comma/semicolon files may be quoted ("a,b"), and a
quoted field other than an id may span lines (a review's text).
Anything else that does not fit (a comment or the header again further down, a line with
another number of fields, an empty id, bytes that are not UTF-8) is an error naming its line.
Arrow reads the file fast; only when it finds a problem is the file scanned line by line to
say where.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import re
import zlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from bert4rec.data import columns
from bert4rec.errors import UserError
from bert4rec.params import RawParams

BLOCK_BYTES = 2 << 20  # Arrow reads ahead many blocks: small blocks keep that memory small
ROWS_PER_TABLE = 1 << 20  # blocks are grouped into tables of about this many rows
HEAD_LINES = 20
SEPARATORS = ("::", "\t", ",", ";", "|", " ")
QUOTING = ",;"  # separators whose fields may be quoted
READ_ERRORS = (OSError, EOFError, zlib.error)
COMPRESSION = {".gz": "gzip", ".gzip": "gzip", ".bz2": "bz2"}  # by suffix, in any case
FIELD_LIMIT = 64 << 20
csv.field_size_limit(FIELD_LIMIT)  # a long quoted text column (reviews) is data, not an error


class LineError(UserError):
    """A problem already located by first_bad_line."""


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
    skip_lines: int  # physical lines before the data: leading blank/comment lines and the header
    time_kind: str | None = None  # int | float | date | zoned: from the first rows, held to the end


def _open_binary(path: Path):
    compression = COMPRESSION.get(path.suffix.lower())
    if compression == "gzip":
        return gzip.open(path, "rb")
    if compression == "bz2":
        return bz2.open(path, "rb")
    return open(path, "rb")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without the line break), a line break being \\n, \\r\\n or a lone
    \\r as for Arrow; bytes that are not UTF-8 are an error naming the line."""
    number = 0
    with _open_binary(path) as handle:
        for chunk in handle:
            if number == 0 and chunk.startswith(b"\xef\xbb\xbf"):
                chunk = chunk[3:]
            chunk = chunk[:-2] if chunk.endswith(b"\r\n") else chunk.removesuffix(b"\n")
            for raw in chunk.split(b"\r"):
                number += 1
                try:
                    yield number, raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise UserError(f"{path}: line {number}, byte {error.start + 1}: {raw[:60]!r} is not UTF-8 "
                                    "text; save the file as UTF-8") from None


def _head(path: Path) -> tuple[int, list[str]]:
    """(physical lines before the first row, the first non-blank lines from that row on)."""
    before, lines = 0, []
    try:
        for number, line in _lines(path):
            if not lines and (not line.strip() or line.lstrip().startswith("#")):
                before = number
                continue
            if line.strip():
                lines.append(line)
            if len(lines) >= HEAD_LINES:
                break
    except READ_ERRORS as error:
        raise UserError(f"{path}: cannot read the file ({error})") from None
    return before, lines


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _rows(lines: list[str], delimiter: str) -> list[list[str]]:
    """The first lines' rows; with quoting, a quoted field may hold line breaks (one row)."""
    if delimiter in QUOTING:
        return [row for row in csv.reader([line + "\n" for line in lines], delimiter=delimiter, quotechar='"') if row]
    return [line.split(delimiter) for line in lines]


def _delimiter(path: Path, lines: list[str], params: RawParams) -> str:
    """The separator that splits every first row into the same number of fields, the most fields
    if several do (';' over the decimal comma of '1;10;4,5'); a space only if nothing else does
    (item names hold spaces); else the first one found."""
    if params.separator is not None:
        return params.separator
    present = [candidate for candidate in SEPARATORS if candidate in lines[0]]
    if not present:
        raise UserError(f"{path}: cannot tell the column separator from its first row {lines[0]!r}; set raw.separator")
    widths = {candidate: {len(row) for row in _rows(lines, candidate)} for candidate in present}
    steady = [candidate for candidate in present if len(widths[candidate]) == 1]
    steady = [candidate for candidate in steady if candidate != " "] or steady
    return max(steady, key=lambda candidate: min(widths[candidate]), default=present[0])


def _has_header(params: RawParams, rows: list[list[str]]) -> bool:
    if params.header is not None:
        return params.header
    fields, rows = rows[0], rows[1:]
    named = {value for value in params.columns.model_dump().values() if isinstance(value, str)}
    if any(_known_name(f) or f.strip() in named for f in fields):
        return True
    # Otherwise a header only if some column is a number on every later row and not on the first
    # (ISBN-like ids, numeric but for an 'X', must not make the first row a header), and no first
    # field comes again below it in its column (a user's id does; a column's name does not).
    if not rows or any(len(row) != len(fields) for row in rows) or any(_is_number(f) for f in fields):
        return False
    # Text ids: a header also if some column's values below share one shape ('u12', 'u7': letters
    # then digits) that the first row's value does not have ('who' over 'u1').
    repeated = any(row[i] == field for row in rows for i, field in enumerate(fields))
    return not repeated and any(all(_is_number(row[i]) for row in rows) or _odd_shape(field, [row[i] for row in rows])
                                for i, field in enumerate(fields))


def _known_name(field: str) -> bool:
    return columns.normalise(field) in {*columns.USER_NAMES, *columns.ITEM_NAMES, *columns.TIME_NAMES}


def _shape(text: str) -> str:
    return re.sub(r"[0-9]+", "0", re.sub(r"[^\W\d_]+", "a", text.strip()))


def _odd_shape(first: str, below: list[str]) -> bool:
    shapes = {_shape(value) for value in below}
    return len(below) >= 2 and len(shapes) == 1 and _shape(first) not in shapes


def sniff(path: Path, params: RawParams) -> Layout:
    """Decide delimiter, header and columns from the first lines of a text file."""
    before, lines = _head(path)
    excel_separator = None
    if lines and len(lines[0]) == 5 and lines[0].startswith("sep="):  # Excel's first line naming the separator
        excel_separator, lines, before = lines[0][4], lines[1:], before + 1
    if not lines:
        raise UserError(f"{path}: the file is empty; expected interactions (user, item[, timestamp])")
    delimiter = params.separator or excel_separator or _delimiter(path, lines, params)
    rows = _rows(lines, delimiter)
    fields = rows[0]
    header = _has_header(params, rows)
    if header:
        names = _header_names(fields, delimiter)
        if len(set(names)) != len(names):
            raise UserError(f"{path}: duplicate column names in the header {names}")
        if len(lines) == 1:
            raise UserError(f"{path}: the file has a header but no rows; expected interactions")
    else:
        names = [f"column_{i}" for i in range(len(fields))]
    user, item, timestamp = _roles(path, params, names, header, rows)
    fmt = params.format
    if fmt == "auto":
        fmt = "sequence_lines" if (len(names) == 2 and delimiter == " " and not header) else "events"
    kind = _time_kind(rows[int(header):], names, timestamp)
    return Layout(fmt, delimiter, header, names, user, item, timestamp, before + int(header), kind)


# Dates are read as the first rows' kind (Arrow's own guess is per block: a time of day after 2 MB of
# dates failed); numbers are left to Arrow, whose float guess for a block holding one is right.
DATE_TYPES = {"date": pa.timestamp("ns"), "zoned": pa.timestamp("ns", tz="UTC")}


def _time_value_kind(value: str) -> str | None:
    """int, float, date (no zone) or zoned for one timestamp field; None if it is none of them."""
    value = value.strip()
    if _is_number(value):
        return "int" if value.lstrip("+-").isdigit() else "float"
    moment = _iso_moment(value)
    return None if moment is None else "zoned" if moment.tzinfo else "date"


def _iso_moment(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None


def _time_kind(rows: list[list[str]], names: list[str], timestamp: str | None) -> str | None:
    """The timestamp column's kind from the first rows: dates are read as that kind, and a row
    that breaks it is named by its line. None: let Arrow guess."""
    if timestamp is None:
        return None
    at = names.index(timestamp)
    kinds = {_time_value_kind(row[at]) for row in rows if len(row) == len(names) and row[at].strip()}
    if kinds == {"int", "float"}:
        return "float"
    return kinds.pop() if len(kinds) == 1 and None not in kinds else None


def _header_names(fields: list[str], delimiter: str) -> list[str]:
    fields = [f.removeprefix("\ufeff") for f in fields]  # a second file's byte-order mark, joined on
    return [f.strip() if delimiter in QUOTING else f.strip().strip("\"'") for f in fields]


def _roles(path: Path, params: RawParams, names: list[str], header: bool,
           rows: list[list[str]]) -> tuple[str, str, str | None]:
    cols = params.columns
    user = columns.find(names, cols.user, columns.USER_NAMES, "user", path)
    item = columns.find(names, cols.item, columns.ITEM_NAMES, "item", path)
    timestamp = columns.find(names, cols.timestamp, columns.TIME_NAMES, "timestamp", path)
    if not header:
        user = user or names[0]
        if item is None and len(names) > 1:
            item = names[1]
        if timestamp is None and cols.timestamp is None and len(names) >= 3:
            timestamp = _guess_headerless_time(rows, len(names))
    guessed = header and params.header is None and not any(map(_known_name, names))
    guessed = " (or raw.header: false if that first row is data)" if guessed else ""
    if user is None:
        raise UserError(f"{path}: no user column found among {names}; set raw.columns.user{guessed}")
    if item is None:
        raise UserError(f"{path}: no item column found among {names}; set raw.columns.item{guessed}")
    columns.require_distinct(path, user=user, item=item, timestamp=timestamp)
    return user, item, timestamp


def _guess_headerless_time(rows: list[list[str]], width: int) -> str | None:
    """MovieLens-style `user item rating timestamp`: the last column, if it holds unix seconds."""
    values = [row[-1] for row in rows]
    if all(v.strip().isascii() and v.strip().isdigit() and int(v) > 10**8 for v in values):
        return f"column_{width - 1}"
    return None


def _arrow_options(layout: Layout):
    """Arrow's options for the layout; '::' is read as ':' with the empty fields in between skipped."""
    double_colon = layout.delimiter == "::"
    width = len(layout.names)
    physical = [f"_{i}" for i in range(2 * width - 1)] if double_colon else list(layout.names)
    rename = {physical[2 * i] if double_colon else physical[i]: name for i, name in enumerate(layout.names)}
    inverse = {v: k for k, v in rename.items()}
    keep = [layout.user, layout.item] + ([layout.timestamp] if layout.timestamp else [])
    read = pacsv.ReadOptions(column_names=physical, skip_rows=layout.skip_lines, block_size=BLOCK_BYTES)
    delimiter = ":" if double_colon else layout.delimiter
    quoting = delimiter in QUOTING
    parse = pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if quoting else False, newlines_in_values=quoting)
    types = {inverse[layout.user]: pa.string(), inverse[layout.item]: pa.string()}
    if layout.time_kind in DATE_TYPES:
        types[inverse[layout.timestamp]] = DATE_TYPES[layout.time_kind]
    convert = pacsv.ConvertOptions(
        column_types=types,
        include_columns=[inverse[k] for k in keep],
        strings_can_be_null=False,
    )
    return read, parse, convert, rename


def tables(path: Path, layout: Layout) -> Iterator[pa.Table]:
    """Stream the file in blocks as standard (user, item[, timestamp]) tables."""
    read, parse, convert, rename = _arrow_options(layout)
    try:
        stream = pa.input_stream(str(path), compression=COMPRESSION.get(path.suffix.lower()))
        reader = pacsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert)
        pending, rows = [], 0
        for batch in reader:
            pending.append(batch)
            rows += batch.num_rows
            if rows >= ROWS_PER_TABLE:
                yield _standard(pending, rename, layout, path)
                pending, rows = [], 0
        if pending:
            yield _standard(pending, rename, layout, path)
    except LineError:
        raise
    except (pa.ArrowInvalid, UserError) as error:
        raise UserError(first_bad_line(path, layout) or _one_line(path, error)) from None
    except READ_ERRORS as error:
        raise UserError(f"{path}: cannot read the file, it may be truncated or corrupt ({error})") from None


def _one_line(path: Path, error: Exception) -> str:
    text = " ".join(str(error).split())
    return text if isinstance(error, UserError) else f"{path}: cannot parse the file ({text})"


def _standard(batches: list[pa.RecordBatch], rename: dict[str, str], layout: Layout, path: Path) -> pa.Table:
    table = pa.Table.from_batches(batches)
    table = table.rename_columns([rename[name] for name in table.column_names])
    table = columns.standardise(table, layout.user, layout.item, layout.timestamp, path)
    if _suspicious(table, layout):
        problem = first_bad_line(path, layout)
        if problem:
            raise LineError(problem)
    return table


def _suspicious(table: pa.Table, layout: Layout) -> bool:
    """Rows that may be a comment, a repeated header or an unclosed quote (confirmed by first_bad_line)."""
    user, item = table.column("user"), table.column("item")
    if pc.any(pc.or_(pc.starts_with(user, "#"), pc.starts_with(user, "\ufeff"))).as_py():
        return True
    if layout.delimiter in QUOTING and any(pc.any(pc.match_substring_regex(ids, "[\r\n]")).as_py()
                                           for ids in (user, item)):
        return True
    if not layout.header:
        return False
    return pc.any(pc.and_(pc.equal(user, layout.user), pc.equal(item, layout.item))).as_py()


def first_bad_line(path: Path, layout: Layout) -> str | None:
    """The first line after the leading ones that is not a row of data, as an error message."""
    try:
        checks = _LineChecks(layout)
        for number, line, fields in _records(path, layout):
            problem = checks.problem(line, fields)
            if problem:
                return f"{path}: line {number}: {line[:80]!r} {problem}"
    except UserError as error:
        return str(error)
    except READ_ERRORS as error:
        return f"{path}: cannot read the file, it may be truncated or corrupt ({error})"
    return None


def _records(path: Path, layout: Layout) -> Iterator[tuple[int, str, list[str]]]:
    """(first line number, its text, fields) of each non-empty row after the leading lines; with
    quoting, a row whose quoted field holds line breaks spans several lines."""
    lines = ((number, line) for number, line in _lines(path) if number > layout.skip_lines)
    if layout.delimiter not in QUOTING:
        yield from ((number, line, line.split(layout.delimiter)) for number, line in lines if line)
        return
    start: list[tuple[int, str]] = []  # the first line the reader took since the last row

    def feed() -> Iterator[str]:
        for number, line in lines:
            if not start:
                start.append((number, line))
            yield line + "\n"

    reader = csv.reader(feed(), delimiter=layout.delimiter, quotechar='"')
    while True:
        try:
            fields = next(reader, None)
        except csv.Error:  # a quote left open runs on past the field size limit
            number, line = start[0]
            raise UserError(f"{path}: line {number}: {line[:80]!r} opens a quote (\") that is not closed in the "
                            f"next {FIELD_LIMIT >> 20} MB; expected one id per field") from None
        if fields is None:
            return
        number, line = start.pop()
        if fields:
            yield number, line, fields


class _LineChecks:
    """What makes a line not a row of data, in the layout's terms."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.ids = {layout.names.index(layout.user): "user", layout.names.index(layout.item): "item"}
        self.time = layout.names.index(layout.timestamp) if layout.timestamp else None
        self.time_kind = layout.time_kind  # None: decided by the first row

    def problem(self, line: str, fields: list[str]) -> str | None:
        layout, width = self.layout, len(self.layout.names)
        if line.lstrip().startswith("#"):
            return "is a comment; comment lines ('#') are only allowed before the first row"
        if len(fields) != width and any("\n" in field for field in fields):
            return "opens a quote (\") that no later line closes where its row should end; expected one id per field"
        if len(fields) != width:
            return f"has {len(fields)} fields; expected {width} separated by {layout.delimiter!r}"
        if layout.header and _header_names(fields, layout.delimiter) == layout.names:
            return "repeats the header (files joined together?); expected data"
        for position, role in self.ids.items():
            value = fields[position].strip()
            if not value or value.lower() in columns.MISSING_TEXT:
                return f"has an empty or NaN {role} id in column '{layout.names[position]}'"
            if "\n" in value or "\r" in value:
                return (f"has a line break inside its quoted {role} id (a quote (\") not closed on its line?); "
                        "expected one id per field on one line (a quote inside a field is written twice: \"\")")
        if self.time is not None:
            return self._time_problem(fields[self.time].strip())
        return None

    def _time_problem(self, value: str) -> str | None:
        name = self.layout.timestamp
        if not value or value.lower() in columns.MISSING_TEXT:
            return f"has no timestamp in column '{name}'"
        kind = _time_value_kind(value)
        if kind is None:
            return f"has {value!r} in column '{name}'; expected a number or an ISO date"
        if self.time_kind is None:
            self.time_kind = kind
        if kind in DATE_TYPES and not 1678 <= _iso_moment(value).year <= 2261:
            return f"has {value!r} in column '{name}'; expected dates in 1678-2261 (nanosecond timestamps)"
        if kind == self.time_kind or (kind, self.time_kind) == ("int", "float"):
            return None
        expected = {"int": "whole numbers", "float": "numbers", "date": "dates without a time zone",
                    "zoned": "dates with a time zone"}[self.time_kind]
        return f"has {value!r} in column '{name}'; expected {expected} like the rows above"
