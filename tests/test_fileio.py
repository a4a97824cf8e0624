"""Atomic writes: temporaries named by their owner's PID, dead runs' ones removed, live ones kept;
outputs that change together; a full disk as one error naming the file."""

import errno
import os
import subprocess
import sys
import time

import pytest

from bert4rec import fileio
from bert4rec.errors import UserError, disk_full_path, is_disk_full


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def temporaries(folder):
    return sorted(p.name for p in folder.iterdir() if fileio.TEMPORARY.match(p.name))


def test_temporaries_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead = dead_pid()
    (tmp_path / f".records.{dead}-abc123.tmp").mkdir()
    (tmp_path / f".records.{dead}-abc123.tmp" / "train-00000-of-00002.tfrecord").write_bytes(b"x")
    (tmp_path / f".sequences.parquet.{dead}-q1w2e3.tmp").write_bytes(b"half")
    (tmp_path / f".raw-spill.{dead}-zz.tmp").write_bytes(b"spill")
    mine = tmp_path / f".sequences.parquet.{os.getpid()}-mine.tmp"
    mine.write_bytes(b"being written")
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            time.sleep(0.2)
            theirs = tmp_path / f".records.{other.pid}-live.tmp"
            theirs.mkdir()
            unrelated = [tmp_path / "sequences.parquet", tmp_path / ".hidden.tmp", tmp_path / f".x.{dead}.tmp"]
            for path in unrelated:
                path.write_bytes(b"keep")
            removed = fileio.remove_stale_temporaries(tmp_path)
            assert sorted(p.name for p in removed) == sorted(
                [f".records.{dead}-abc123.tmp", f".sequences.parquet.{dead}-q1w2e3.tmp", f".raw-spill.{dead}-zz.tmp"])
            assert mine.exists() and theirs.exists() and all(p.exists() for p in unrelated)
        finally:
            other.kill()


def test_a_reused_pid_does_not_keep_a_dead_runs_temporary(tmp_path):
    """Our own PID, but the temporary was written an hour before this process started."""
    stale = tmp_path / f".records.{os.getpid()}-old.tmp"
    stale.mkdir()
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    assert fileio.remove_stale_temporaries(tmp_path) == [stale]


def test_atomic_writes_sweep_the_folder_and_leave_no_temporary(tmp_path):
    stale = tmp_path / f".manifest.json.{dead_pid()}-x.tmp"
    stale.write_text("{")
    fileio.write_json(tmp_path / "manifest.json", {"a": 1})
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]
    with pytest.raises(RuntimeError), fileio.atomic_dir(tmp_path / "records") as out:
        assert fileio.TEMPORARY.match(out.name) and str(os.getpid()) in out.name
        (out / "shard").write_bytes(b"x")
        raise RuntimeError("stage failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_outputs_change_together_or_not_at_all(tmp_path):
    first, second, new = tmp_path / "sequences.parquet", tmp_path / "records", tmp_path / "users.parquet"
    first.write_text("old sequences")
    second.mkdir()
    (second / "manifest.json").write_text("old manifest")
    with pytest.raises(UserError, match="later failure"), fileio.all_or_nothing():
        fileio.write_json(first, {"new": True})
        with fileio.atomic_dir(second) as out:
            (out / "manifest.json").write_text("new manifest")
        fileio.write_json(new, {"new": True})
        fileio.write_json(first, {"newer": True})  # written twice: the first old copy is what comes back
        raise UserError("later failure")
    assert first.read_text() == "old sequences" and (second / "manifest.json").read_text() == "old manifest"
    assert not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records", "sequences.parquet"]
    with fileio.all_or_nothing():
        fileio.write_json(first, {"new": True})
        with fileio.atomic_dir(second) as out:
            (out / "manifest.json").write_text("new manifest")
    assert (second / "manifest.json").read_text() == "new manifest" and '"new": true' in first.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records", "sequences.parquet"]


def test_small_files_are_put_back_after_moves_links_and_deletions(tmp_path):
    names = ("params.yaml", "dvc.lock", "active", "link.yaml", "moved.lock")
    params, lock, marker, link, moved = (tmp_path / name for name in names)
    params.write_text("old params")
    lock.write_text("old lock")
    link.symlink_to("params.yaml")
    with pytest.raises(KeyboardInterrupt), fileio.restore_on_failure([params, lock, marker, link, moved]):
        params.write_text("new params")
        lock.rename(moved)
        marker.write_text("new")
        link.unlink()
        link.write_text("a file where the link was")
        raise KeyboardInterrupt
    assert params.read_text() == "old params" and lock.read_text() == "old lock"
    assert link.is_symlink() and str(link.readlink()) == "params.yaml"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvc.lock", "link.yaml", "params.yaml"]
    with fileio.restore_on_failure([params, marker]):
        marker.write_text("kept")
    assert marker.read_text() == "kept"


def test_what_counts_as_a_full_disk():
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    tf_message = ("{{function_node __wrapped__CreateSummaryFileWriter_device_/job:localhost/replica:0}} "
                  "/data/p/models/tiny/tensorboard/events.out.tfevents.1.v2; No space left on device")
    assert is_disk_full(RuntimeError(tf_message))
    assert disk_full_path(RuntimeError(tf_message)) == "/data/p/models/tiny/tensorboard/events.out.tfevents.1.v2"
    assert disk_full_path(OSError(errno.ENOSPC, "No space left on device", "/x/y")) == "/x/y"
    assert not is_disk_full(UserError("/x: no space left on device"))  # already explained


def test_full_disk_is_one_error_naming_the_file_and_nothing_is_left(small_disk):
    disk = small_disk("64k")
    (disk / "keep.json").write_text("{}")
    with pytest.raises(UserError) as raised:
        with fileio.atomic_file(disk / "out.bin") as tmp:
            tmp.write_bytes(b"x" * 200_000)
    assert str(raised.value).startswith(f"{disk / 'out.bin'}: no space left on device (")
    assert f"free on {disk})" in str(raised.value)
    with pytest.raises(UserError, match=f"^{disk}: no space left on device while writing the temporary raw-spill"):
        with fileio.scratch_file(disk, "raw-spill") as tmp, open(tmp, "wb") as handle:
            handle.write(b"x" * 200_000)
    assert sorted(p.name for p in disk.iterdir()) == ["keep.json"]


@pytest.mark.parametrize("inside_a_transaction", [False, True])
def test_a_file_that_cannot_be_replaced_is_one_error_and_stays_as_it_was(tmp_path, monkeypatch, inside_a_transaction):
    target = tmp_path / "sequences.parquet"
    target.write_text("earlier")
    replace = os.replace

    def refusing(source, destination):  # as an immutable file (chattr +i) refuses
        if os.fspath(destination) == os.fspath(target) and "old" not in os.fspath(source):
            raise PermissionError(errno.EPERM, "Operation not permitted")
        replace(source, destination)

    monkeypatch.setattr(fileio.os, "replace", refusing)
    with pytest.raises(UserError, match=r"sequences\.parquet: cannot be replaced \(Operation not permitted\)"):
        if inside_a_transaction:
            with fileio.all_or_nothing(), fileio.atomic_file(target) as tmp:
                tmp.write_text("new")
        else:
            with fileio.atomic_file(target) as tmp:
                tmp.write_text("new")
    assert target.read_text() == "earlier" and [p.name for p in tmp_path.iterdir()] == ["sequences.parquet"]
