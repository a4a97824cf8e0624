"""What every stage starts with: the project lock."""

import os
import subprocess
import sys

from bert4rec.fileio import hold_lock, release_locks
from helpers import run_stage


def test_a_second_stage_on_a_busy_project_stops_at_once(synthetic_project, capsys):
    hold_lock(synthetic_project / ".bert4rec.lock", "`bert4rec train_val`", "busy")
    try:
        code = subprocess.run([sys.executable, "-m", "bert4rec.cli", "raw", "--project", str(synthetic_project)],
                              env={**os.environ, "BERT4REC_TRACKING": "off"}, capture_output=True, text=True,
                              timeout=120)
    finally:
        release_locks()
    assert code.returncode == 2
    lines = code.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: project {synthetic_project} is busy: `bert4rec train_val` (pid {os.getpid()}")
    assert "Traceback" not in code.stderr and not (synthetic_project / "data" / "interim").exists()
    assert run_stage("raw", synthetic_project) == 0  # released: the project is free again
