"""The console entry point: SIGTERM unwinds a command as Ctrl-C does."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from bert4rec import cli


def self_terminating(argv: list[str]) -> int:
    """A command that is sent SIGTERM while it holds a temporary file (removed on the way out, as
    the stages' context managers remove theirs)."""
    temporary = Path(argv[0])
    temporary.write_text("partial")
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        return 0
    finally:
        temporary.unlink()


def forks_a_worker(argv: list[str]) -> int:
    """A forked worker that is sent SIGTERM unwinds and exits with 143 (exit 0 here when it did)."""
    ready, started = os.pipe()
    child = os.fork()
    if child == 0:  # a signal before Python's own fork bookkeeping ends would be dropped: say when
        code = 0
        try:
            os.write(started, b"1")
            time.sleep(30)
        except SystemExit as stop:
            code = stop.code
        finally:
            os._exit(code)
    os.read(ready, 1)
    time.sleep(0.2)
    os.kill(child, signal.SIGTERM)
    _, status = os.waitpid(child, 0)
    return 0 if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 128 + signal.SIGTERM else 1


def reraised_by_a_library(argv: list[str]) -> int:
    """TensorFlow's C++ turns an exception raised inside its callbacks into its own RuntimeError."""
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    except cli.Terminated:
        raise RuntimeError("pybind11::error_already_set: MISMATCH of original and normalized active exception "
                           "types: ORIGINAL InvalidArgumentError REPLACED BY Terminated") from None
    return 0


def swallowed_by_a_library(argv: list[str]) -> int:
    """A SIGTERM lost inside a library (an 'Exception ignored' in a destructor): the command ends."""
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    except cli.Terminated:
        pass
    return 0


@pytest.fixture
def commands(monkeypatch):
    for name in ("self-terminating", "forks-a-worker", "reraised-by-a-library", "swallowed-by-a-library"):
        monkeypatch.setitem(cli.COMMANDS, name, (f"{__name__}:{name.replace('-', '_')}", "test command"))


def test_sigterm_unwinds_a_command_as_ctrl_c_does(commands, tmp_path, capsys):
    handler = signal.getsignal(signal.SIGTERM)
    assert cli.main(["self-terminating", str(tmp_path / "partial.tmp")]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == "terminated\n"
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is handler  # restored when the command ends


def test_a_forked_worker_exits_on_sigterm(commands):
    assert cli.main(["forks-a-worker"]) == 0


@pytest.mark.parametrize("command", ["reraised-by-a-library", "swallowed-by-a-library"])
def test_a_sigterm_a_library_turned_into_another_error_or_lost_still_ends_as_terminated(commands, capsys, command):
    assert cli.main([command]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == "terminated\n"
    assert cli.main(["forks-a-worker"]) == 0  # the next command in this process starts afresh
