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
    """A forked worker that is sent SIGTERM dies of it (exit 0 here when it did)."""
    ready, started = os.pipe()
    child = os.fork()
    if child == 0:  # a signal before Python's own fork bookkeeping ends would be dropped: say when
        os.write(started, b"1")
        time.sleep(30)
        os._exit(0)
    os.read(ready, 1)
    time.sleep(0.2)
    os.kill(child, signal.SIGTERM)
    _, status = os.waitpid(child, 0)
    return 0 if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM else 1


@pytest.fixture
def commands(monkeypatch):
    for name in ("self-terminating", "forks-a-worker"):
        monkeypatch.setitem(cli.COMMANDS, name, (f"{__name__}:{name.replace('-', '_')}", "test command"))


def test_sigterm_unwinds_a_command_as_ctrl_c_does(commands, tmp_path, capsys):
    handler = signal.getsignal(signal.SIGTERM)
    assert cli.main(["self-terminating", str(tmp_path / "partial.tmp")]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == "terminated\n"
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is handler  # restored when the command ends


def test_a_forked_worker_still_dies_of_sigterm(commands):
    assert cli.main(["forks-a-worker"]) == 0
