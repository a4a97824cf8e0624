import signal
import subprocess
import sys
import time

import psutil

SCRIPT = """
import sys
from pathlib import Path
from bert4rec.cli import sigterm_unwinds
from bert4rec.tools.benchkit import measure
child = [sys.executable, "-c", "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)",
         sys.argv[1]]
with sigterm_unwinds():
    measure(child, Path(sys.argv[2]))
"""


def test_a_stopped_benchmark_stops_the_stage_it_runs(tmp_path):
    pid_file = tmp_path / "child.pid"
    bench = subprocess.Popen([sys.executable, "-c", SCRIPT, str(pid_file), str(tmp_path / "stage.log")])
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    child = psutil.Process(int(pid_file.read_text()))
    bench.send_signal(signal.SIGTERM)
    assert bench.wait(60) != 0
    try:
        child.wait(5)
    except psutil.TimeoutExpired:
        child.kill()
        raise AssertionError("the benchmark's stage kept running after the benchmark was stopped")
