"""Input columns -> the standard event columns: which column holds the user, the item and the
timestamp, and their values in one checked form (ids as text exactly as given, timestamps as
numbers). Every rejected value is named by file, column and, where known, row.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from bert4rec.errors import UserError

USER_NAMES = ("userid", "user", "uid", "customerid", "visitorid", "sessionid", "clientid", "customer", "visitor",
              "client")
ITEM_NAMES = ("itemid", "item", "movieid", "productid", "iid", "articleid", "trackid", "sku", "product", "movie",
              "article", "track")
TIME_NAMES = ("timestamp", "time", "ts", "datetime", "date", "eventtime", "unixtime")
ITEMS_NAMES = ("items", "itemids", "sequence", "history", "movieids")
MISSING_TEXT = ("nan", "null", "none", "n/a", "<na>", "#n/a")  # not "NA": a country code, a surname
INT64_LIMIT = 2.0**63
INT64_MAX = 2**63 - 1


def normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def find(names: list[str], wanted: str | int | None, candidates: tuple, role: str, path: Path) -> str | None:
    """The column for a role: given by name or 0-based position (raw.columns), else by its name."""
    if isinstance(wanted, int):
        if not 0 <= wanted < len(names):
            raise UserError(f"{path}: raw.columns.{role} = {wanted}, but the file has {len(names)} columns")
        return names[wanted]
    if isinstance(wanted, str):
        if wanted not in names:
            raise UserError(f"{path}: no column '{wanted}' (raw.columns.{role}); columns are {names}")
        return wanted
    by_norm = {normalise(n): n for n in names}
    for candidate in candidates:
        if candidate in by_norm:
            return by_norm[candidate]
    return None


def require_distinct(path: Path, **roles: str | None) -> None:
    """One column cannot be two roles (raw.columns naming the same column for user and item)."""
    seen: dict[str, str] = {}
    for role, column in roles.items():
        if column is None:
            continue
        if column in seen:
            raise UserError(f"{path}: column '{column}' is both the {seen[column]} and the {role} column "
                            f"(raw.columns); expected different columns")
        seen[column] = role


def _at(mask, first_row: int | None) -> str:
    """' (row N)' for the first true value of `mask`, when rows are meaningful (not for text files)."""
    if first_row is None:
        return ""
    return f" (row {first_row + pc.index(mask, True).as_py() + 1})"


def _whole_numbers(column: pa.ChunkedArray, name: str, path: Path, first_row: int | None) -> pa.ChunkedArray:
    """Float ids (e.g. an integer column with gaps, saved by pandas) that hold whole numbers."""
    nan = pc.is_nan(column)
    if pc.any(nan).as_py():
        raise UserError(f"{path}: column '{name}' has missing (NaN) ids{_at(nan, first_row)}")
    bad = pc.invert(pc.and_(pc.less(pc.abs(column), INT64_LIMIT), pc.equal(pc.floor(column), column)))
    if pc.any(bad).as_py():
        value = column.filter(bad)[0].as_py()
        raise UserError(f"{path}: column '{name}' holds {value!r}{_at(bad, first_row)}; ids must be whole "
                        "numbers or text")
    return pc.cast(column, pa.int64())


def _utf8(column: pa.ChunkedArray, name: str, path: Path, first_row: int | None) -> pa.ChunkedArray:
    try:
        return pc.cast(column, pa.string())
    except pa.ArrowInvalid:
        values = column.to_pylist()
        row = next(i for i, value in enumerate(values) if not _decodes(value))
        where = f" (row {first_row + row + 1})" if first_row is not None else ""
        raise UserError(f"{path}: column '{name}' holds bytes that are not UTF-8 text{where}: {values[row][:40]!r}; "
                        "expected text or integer ids") from None


def _decodes(value: bytes) -> bool:
    try:
        value.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def ids(column: pa.ChunkedArray, name: str, path: Path, first_row: int | None = None) -> pa.ChunkedArray:
    """Ids as text, exactly as given (surrounding whitespace trimmed); missing or empty ids,
    fractions and nested values are errors."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(kind.value_type), kind.value_type
    if column.null_count:
        raise UserError(f"{path}: column '{name}' has missing (null) ids{_at(column.is_null(), first_row)}")
    if pa.types.is_nested(kind):
        raise UserError(f"{path}: column '{name}' holds {kind} values; expected one integer or text id per row")
    if pa.types.is_floating(kind):
        column = _whole_numbers(column, name, path, first_row)
    elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        column = _utf8(column, name, path, first_row)
    elif not (pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        try:
            column = pc.cast(column, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise UserError(f"{path}: column '{name}' holds {kind} values; expected integer or text ids") from None
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = pc.utf8_trim_whitespace(column)
        empty = pc.or_(pc.equal(column, ""), pc.is_in(pc.utf8_lower(column), pa.array(MISSING_TEXT)))
        if pc.any(empty).as_py():
            raise UserError(f"{path}: column '{name}' has empty or NaN ids{_at(empty, first_row)}")
    return pc.cast(column, pa.string())


def times(column: pa.ChunkedArray, name: str, path: Path, first_row: int | None = None) -> pa.ChunkedArray:
    """Numbers stay numbers (unix seconds for a time split); dates and date strings become
    timestamp[ns] (readers.event_times turns them into nanoseconds to sort by)."""
    kind = column.type
    if column.null_count or (pa.types.is_floating(kind) and pc.any(pc.is_nan(column)).as_py()):
        missing = pc.or_(column.is_null(), pc.is_nan(column)) if pa.types.is_floating(kind) else column.is_null()
        raise UserError(f"{path}: column '{name}' has missing timestamps{_at(missing, first_row)}")
    if pa.types.is_floating(kind):
        infinite = pc.invert(pc.is_finite(column))
        if pc.any(infinite).as_py():
            raise UserError(f"{path}: column '{name}' holds {column.filter(infinite)[0].as_py()}{_at(infinite, first_row)}; "
                            "expected finite timestamps")
        return pc.cast(column, pa.float64())
    if pa.types.is_integer(kind):
        too_large = pc.greater(column, pa.scalar(INT64_MAX, kind)) if kind == pa.uint64() else None
        if too_large is not None and pc.any(too_large).as_py():
            raise UserError(f"{path}: column '{name}' holds {column.filter(too_large)[0].as_py()}"
                            f"{_at(too_large, first_row)}; expected timestamps below 2^63")
        return pc.cast(column, pa.int64())
    try:
        return pc.cast(column, pa.timestamp("ns"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
            raise UserError(f"{path}: column '{name}' has dates outside 1677-2262, the range of nanosecond "
                            f"timestamps ({error})") from None
        zoned = _zoned_text(column)
        if zoned is not None:
            return zoned
        raise UserError(f"{path}: column '{name}' is not a timestamp (numbers or dates expected){_first_non_date(column)}") from None


def _zoned_text(column: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """ISO text with a zone ('...Z', '...+02:00') as UTC instants; None if it is not that."""
    try:
        return pc.cast(pc.cast(column, pa.timestamp("ns", tz="UTC")), pa.timestamp("ns"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _first_non_date(column: pa.ChunkedArray) -> str:
    """"; e.g. row 7: 'yesterday'" naming a value that is no date, found by halving (error path only)."""
    def fails(part: pa.ChunkedArray) -> bool:
        try:
            pc.cast(part, pa.timestamp("ns"))
            return False
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return _zoned_text(part) is None

    low, high = 0, len(column)
    while high - low > 1:
        middle = (low + high) // 2
        if fails(column.slice(low, middle - low)):
            high = middle
        elif fails(column.slice(middle, high - middle)):
            low = middle
        else:  # each half reads, the whole does not (zoned and zone-less dates mixed)
            return "; dates with and without a time zone are mixed"
    return f"; {column[low].as_py()!r} is neither" if high > low and fails(column.slice(low, 1)) else ""


def standardise(table: pa.Table, user: str, item: str, timestamp: str | None, path: Path,
                first_row: int | None = None) -> pa.Table:
    """A table with the columns user, item (text ids) and, when there is one, timestamp."""
    columns = {"user": ids(table.column(user), user, path, first_row),
               "item": ids(table.column(item), item, path, first_row)}
    if timestamp:
        columns["timestamp"] = times(table.column(timestamp), timestamp, path, first_row)
    return pa.table(columns)
