"""Atomic writes: a failed stage never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError

from bert4rec.errors import UserError


_held_locks: list = []  # files locked until the command ends (see hold_lock)


def hold_lock(path: Path, holder: str, busy: str) -> None:
    """Lock `path` until the command ends (release_locks), or stop at once naming the holder.

    An flock: the system drops it when its process dies, so a killed run never leaves a stale
    lock. `holder` describes this process for whoever is refused; `busy` starts their message.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if any(Path(held.name) == path for held in _held_locks):
        return  # this command holds it already (`make promote` running `make inference`)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise UserError(f"{busy}: {owner} holds {path}; wait for it to finish or stop it") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{holder} (pid {os.getpid()}, since {time.strftime('%H:%M:%S')})\n")
    handle.flush()
    _held_locks.append(handle)


def release_locks() -> None:
    while _held_locks:
        _held_locks.pop().close()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def ensure_dir(folder: Path) -> Path:
    """Create an output folder, or fail with a message naming it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"{folder}: cannot create output folder ({error.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"{folder}: output folder is not writable")
    return folder


def _make_parent(path: Path) -> None:
    ensure_dir(path.parent)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds."""
    path = Path(path)
    _make_parent(path)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp)
    tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def parquet_stream(path: str | Path, schema: pa.Schema) -> Iterator[Callable[[pa.Table], None]]:
    """Write a Parquet file a row group at a time (memory flat); in place only if the block succeeds."""
    with atomic_file(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        yield writer.write_table


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    _make_parent(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, data: dict) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path, what: str) -> dict:
    """Read a JSON object; a missing file or bad JSON is an error naming the file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: {what} not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: {what} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: {what} is not a JSON object")
    return data


Typed = TypeVar("Typed", bound=BaseModel)


def read_typed(path: str | Path, kind: type[Typed], what: str, hint: str = "") -> Typed:
    """Read and validate a JSON file into `kind`; a wrong or missing key is one line naming it."""
    data = read_json(path, what)
    try:
        return kind.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise UserError(f"{path}: {what}: key '{key}': {first['msg']}{hint}") from None


def write_typed(path: str | Path, value: BaseModel) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(value.model_dump_json(indent=2) + "\n")


def write_curves(path: str | Path, rows: dict[int, dict[str, float]]) -> None:
    """Per-step metrics as CSV (step, then every metric seen; blank where a step lacks one)."""
    columns: list[str] = []
    for row in rows.values():
        columns += [k for k in row if k not in columns]
    lines = [",".join(["step", *columns])]
    for step in sorted(rows):
        lines.append(",".join([str(step), *(repr(float(rows[step][c])) if c in rows[step] else "" for c in columns)]))
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
