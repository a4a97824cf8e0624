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


def test_a_forked_worker_exits_on_sigterm(commands):
    assert cli.main(["forks-a-worker"]) == 0
