"""Atomic writes: a failed stage never leaves a half-written output behind.

Every temporary is written beside its target as `.<name>.<pid>-<random>.tmp`, so one whose
owner was killed (SIGKILL leaves no chance to clean up) is recognisable: the next write into
the same folder removes it, while a running process's temporaries are left alone. A full disk
is one error naming the path, with the temporary removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError

from bert4rec.errors import UserError, is_disk_full

TEMPORARY = re.compile(r"^\..+\.(?P<pid>[0-9]+)-\w+\.tmp$")
CLOCK_SLACK_SECONDS = 2.0  # process start times are known to about a second


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
    owner = try_lock(handle)
    if owner is not None:
        handle.close()
        raise UserError(f"{busy}: {owner or 'another process'} holds {path}; wait for it to finish or stop it")
    handle.seek(0)
    handle.truncate()
    try:
        with disk_full_names(path):
            handle.write(f"{holder} (pid {os.getpid()}, since {time.strftime('%H:%M:%S')})\n")
            handle.flush()
    except BaseException:
        handle.close()
        raise
    _held_locks.append(handle)


def try_lock(handle) -> str | None:
    """Take the flock on an open file: None if taken (released when the file closes), else
    what its holder wrote in it."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        handle.seek(0)
        return handle.read().strip()


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
        if is_disk_full(error):
            raise disk_full(folder) from None
        raise UserError(f"{folder}: cannot create output folder ({error.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"{folder}: output folder is not writable")
    return folder


def _make_parent(path: Path) -> None:
    ensure_dir(path.parent)


# ---------------------------------------------------------------- a full disk

def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() or not os.path.ismount(path):
        path = path.parent
    return path


def disk_full(path: Path, writing: str = "") -> UserError:
    mount = _mount_point(path)
    free = shutil.disk_usage(mount).free / 1e6
    return UserError(f"{path}: no space left on device{writing} ({free:.1f} MB free on {mount}); nothing was "
                     "written, free some space and rerun")


@contextlib.contextmanager
def disk_full_names(path: Path, writing: str = "") -> Iterator[None]:
    """Turn a full disk inside the block into one error naming `path` (and what was being written)."""
    try:
        yield
    except Exception as error:
        if is_disk_full(error):
            raise disk_full(path, writing) from None
        raise


# ---------------------------------------------------------------- temporaries

def _owner_alive(pid: int, written: float) -> bool:
    """Whether the process that wrote a temporary (last modified at `written`) still runs.

    A live process with this PID that started after the temporary was written is a newcomer
    that got a dead owner's PID, so the temporary is stale.
    """
    import psutil

    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and process.create_time() <= written + CLOCK_SLACK_SECONDS
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporaries in `folder` whose owner process is gone; returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = TEMPORARY.match(entry.name)
        if not match:
            continue
        try:
            if _owner_alive(int(match["pid"]), entry.stat(follow_symlinks=False).st_mtime):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except FileNotFoundError:  # its owner finished, or another run removed it first
            continue
        removed.append(Path(entry.path))
    return removed


def _temporary(folder: Path, name: str, directory: bool) -> Path:
    """A new temporary `.<name>.<pid>-<random>.tmp` in `folder`, after removing dead runs' ones."""
    remove_stale_temporaries(folder)
    prefix, suffix = f".{name}.{os.getpid()}-", ".tmp"
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=folder))
        tmp.chmod(0o777 & ~_umask())
        return tmp
    handle, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    os.close(handle)
    tmp = Path(tmp)
    tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    return tmp


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class _Transaction:
    """Outputs put in place inside `all_or_nothing`, each with what it replaced (kept aside)."""

    def __init__(self) -> None:
        self.replaced: dict[Path, Path | None] = {}

    def undo(self) -> None:
        for path, old in reversed(self.replaced.items()):
            _remove(path)
            if old is not None:
                os.replace(old, path)

    def commit(self) -> None:
        for old in self.replaced.values():
            if old is not None:
                _remove(old)


_transaction: _Transaction | None = None


@contextlib.contextmanager
def all_or_nothing() -> Iterator[None]:
    """A stage's outputs change together: when the block fails, every output it already put in
    place is put back as it was (so a stage never leaves a new file beside a stale one)."""
    global _transaction
    if _transaction is not None:  # nested: the outer block decides
        yield
        return
    _transaction = _Transaction()
    try:
        yield
    except BaseException:
        _transaction.undo()
        raise
    else:
        _transaction.commit()
    finally:
        _transaction = None


@contextlib.contextmanager
def restore_on_failure(paths: list[Path]) -> Iterator[None]:
    """Put each of a few small files back as it was (contents, link or absence) if the block fails:
    for changes made by moves, links and deletions as well as writes (a project switch)."""
    saved = {path: ("link", path.readlink()) if path.is_symlink()
             else ("file", path.read_bytes()) if path.is_file() else None for path in paths}
    try:
        yield
    except BaseException:
        for path, state in saved.items():
            if state is not None and state[0] == "file":
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_file(path) as tmp:  # the rename replaces a link put there meanwhile
                    tmp.write_bytes(state[1])
                continue
            path.unlink(missing_ok=True)
            if state is not None:
                path.symlink_to(state[1])
        raise


def _put_in_place(tmp: Path, path: Path) -> None:
    """Rename a finished temporary onto `path`; what it replaces is deleted, or kept aside to
    restore while an all_or_nothing block is open."""
    keep = _transaction is not None and path not in _transaction.replaced
    old = None
    try:
        if path.exists() or path.is_symlink():
            if keep or (path.is_dir() and not path.is_symlink()):
                old = path.with_name(f".{path.name}.{os.getpid()}-old.tmp")
                _remove(old)
                os.replace(path, old)
        try:
            os.replace(tmp, path)
        except OSError:
            if old is not None:
                os.replace(old, path)
            raise
    except PermissionError as error:  # an immutable (chattr +i) or foreign-owned file
        raise UserError(f"{path}: cannot be replaced ({error.strerror}); make it writable (or remove it) and "
                        "rerun; the earlier file is left as it was") from None
    if keep:
        _transaction.replaced[path] = old
    elif old is not None:
        _remove(old)


@contextlib.contextmanager
def _atomic(path: str | Path, directory: bool) -> Iterator[Path]:
    path = Path(path)
    if path.exists() and not path.is_symlink() and (path.is_dir() != directory or not (path.is_file() or path.is_dir())):
        what = "a folder" if path.is_dir() else "a file" if path.is_file() else "not a regular file"
        raise UserError(f"{path}: is {what}; expected {'a folder' if directory else 'a file'} to write (nothing was "
                        "written or removed)")
    _make_parent(path)
    with disk_full_names(path):
        tmp = _temporary(path.parent, path.name, directory)
        try:
            yield tmp
            _put_in_place(tmp, path)
        finally:
            _remove(tmp)


def atomic_file(path: str | Path) -> contextlib.AbstractContextManager[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds."""
    return _atomic(path, directory=False)


def atomic_dir(path: str | Path) -> contextlib.AbstractContextManager[Path]:
    """Yield a temporary folder beside `path`; it replaces `path` only if the block succeeds."""
    return _atomic(path, directory=True)


@contextlib.contextmanager
def scratch_file(folder: Path, name: str) -> Iterator[Path]:
    """A temporary file in `folder` for a stage's intermediate data, removed when the block ends."""
    ensure_dir(folder)
    with disk_full_names(folder, f" while writing the temporary {name} file"):
        tmp = _temporary(folder, name, directory=False)
        try:
            yield tmp
        finally:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def parquet_stream(path: str | Path, schema: pa.Schema) -> Iterator[Callable[[pa.Table], None]]:
    """Write a Parquet file a row group at a time (memory flat); in place only if the block succeeds."""
    with atomic_file(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        yield writer.write_table


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


def _cell(value) -> str:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else repr(float(value))


def write_curves(path: str | Path, rows: dict[int, dict[str, float]]) -> None:
    """Per-step metrics as CSV (step, then every metric seen; blank where a step lacks one)."""
    columns: list[str] = []
    for row in rows.values():
        columns += [k for k in row if k not in columns]
    lines = [",".join(["step", *columns])]
    for step in sorted(rows):
        lines.append(",".join([str(step), *(_cell(rows[step][c]) if c in rows[step] else "" for c in columns)]))
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
