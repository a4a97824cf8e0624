"""`bert4rec <stage>`: one console entry point; each subcommand is a stage's main(argv)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading

from bert4rec import arguments
from bert4rec.errors import ClusterStopped, UserError, disk_full_path, is_disk_full
from bert4rec.fileio import release_locks

COMMANDS = {
    "raw": ("bert4rec.stages.raw", "input file -> per-user item sequences (Parquet)"),
    "tfrecord": ("bert4rec.stages.tfrecord", "sequences -> vocabulary + sharded TFRecords"),
    "train_val": ("bert4rec.stages.train_val", "train BERT4Rec on the train split, validate, export the model"),
    "test": ("bert4rec.stages.test", "full-ranking metrics of a trained model on the test split"),
    "inference": ("bert4rec.stages.inference", "top-N next items (and user embeddings) per user"),
    "project": ("bert4rec.workflow.projects:main_project", "create projects/<name>/ from an input file and make it active"),
    "use": ("bert4rec.workflow.projects:main_use", "make another project active (no name: list the projects)"),
    "pipeline": ("bert4rec.workflow.projects:main_pipeline", "render dvc.yaml for the active project from config/pipeline.yaml"),
    "run": ("bert4rec.workflow.make", "git commit/push + MLflow parent run + dvc repro <stage> + commit dvc.lock + dvc push"),
    "sweep": ("bert4rec.workflow.sweeps:main_sweep", "one DVC experiment per point of config/sweeps/<name>.yaml, run by DVC's queue"),
    "compare": ("bert4rec.workflow.sweeps:main_compare", "a sweep side by side: varied params, valid/test NDCG@10, HR@10 (+ CSV)"),
    "promote": ("bert4rec.workflow.promote", "apply the sweep's best experiment (validation) and register it as @champion"),
    "ui": ("bert4rec.workflow.make:main_ui", "serve the MLflow UI of the local store on 127.0.0.1"),
    "sync": ("bert4rec.workflow.make:main_sync", "send what runs kept while the tracking server was down"),
    "demo": ("bert4rec.tools.demo", "MovieLens-1M (download + checksum, or --data FILE) through inference"),
    "synth": ("bert4rec.tools.synthetic", "write a deterministic synthetic dataset (for tests and demos)"),
    "bench-data": ("bert4rec.tools.bench_data", "time raw+tfrecord on ML-1M and a large synthetic log"),
    "bench-quality": ("bert4rec.tools.bench_quality", "ML-1M quality + speed benchmark of the whole pipeline (<= 60 min training)"),
    "bench-speed": ("bert4rec.tools.bench_speed", "training speed: the last release's configuration vs the defaults, one run"),
    "bench-inference": ("bert4rec.tools.bench_inference", "inference speed: the last release's code vs today's on ML-1M, one run"),
    "bench-scale": ("bert4rec.tools.bench_scale", "668,438 items, 1M and 250k users through all stages (bench/scale.json)"),
    "bench-peer": ("bert4rec.tools.bench_peer", "RecTools BERT4Rec/SASRec beside ours on ML-1M, same size and budget (own venv)"),
    "bench-finetune": ("bert4rec.tools.bench_finetune", "ML-100K: pretrain, then fine-tune on a later period vs from scratch (time split)"),
}


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a scheduler, a container stop) unwinds the command as Ctrl-C does: temporary
    files are removed, earlier outputs stay whole, the tracking run is closed."""


@contextlib.contextmanager
def sigterm_unwinds():
    """SIGTERM raises Terminated in this process while the command runs. A worker forked meanwhile
    inherits the handler and exits through SystemExit instead, so that it, too, unwinds (a pool
    worker killed outright could die holding its queue's lock, and the pool's shutdown would wait
    for that lock forever). An ignored SIGTERM stays ignored."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        yield
        return
    main_pid = os.getpid()

    def on_sigterm(signum, frame):
        if os.getpid() != main_pid:
            _worker_exit(signum, frame)
        _received.add(signum)
        raise Terminated()

    before = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if before is None else before)


_received: set[int] = set()  # SIGTERMs seen: TensorFlow's C++ may re-raise Terminated as another error, or lose it


def _worker_exit(signum, frame):
    raise SystemExit(128 + signal.SIGTERM)


def exit_on_signal() -> None:
    """Initializer of a spawned pool worker: SIGTERM or Ctrl-C ends it at once. The pool
    (concurrent.futures) sees a worker gone and stops the others; the stage itself unwinds in the
    main process, which got the same signal. A worker that unwound instead would report the
    interrupt as its shard's result and go on to the next shard. A signal the stage ignores (DVC
    runs stages with SIGINT ignored) its workers ignore too: they would die alone, the stage going on."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(signum) is not signal.SIG_IGN:  # inherited through spawn's exec
            signal.signal(signum, _exit_now)


def _exit_now(signum, frame):
    os._exit(128 + signum)


def usage() -> str:
    lines = ["usage: bert4rec <command> [options]", "", "commands:"]
    lines += [f"  {name:<12} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    console = argv is None  # the `bert4rec` command itself, not a caller in this process (a test)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command '{command}'\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, _, function = COMMANDS[command][0].partition(":")
    argparse.ArgumentParser.error = arguments.one_line_error  # the commands' own parsers, in this process
    _received.clear()
    try:
        with sigterm_unwinds():
            entry = getattr(importlib.import_module(module_name), function or "main")
            code = entry(rest) or 0
        if _received:  # a SIGTERM that TensorFlow swallowed: the command was still asked to stop
            raise Terminated()
        return code
    except UserError as error:
        logging.getLogger("bert4rec").debug("user error", exc_info=True)
        print(f"error: {error}", file=sys.stderr)
        if isinstance(error, ClusterStopped) and console:
            release_locks()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
        return 2
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, Terminated)
        print("terminated" if terminated else "interrupted", file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    except Exception as error:  # a full disk where no atomic write could name the file
        if _received or "KeyboardInterrupt" in str(error):  # a stop that TensorFlow re-raised as its own error
            logging.getLogger("bert4rec").debug("stopped", exc_info=True)
            terminated = bool(_received)
            print("terminated" if terminated else "interrupted", file=sys.stderr)
            return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
        if not is_disk_full(error):
            raise
        logging.getLogger("bert4rec").debug("disk full", exc_info=True)
        where = disk_full_path(error) or "writing the outputs"
        print(f"error: {where}: no space left on device; free some space and rerun", file=sys.stderr)
        return 2
    finally:
        release_locks()


if __name__ == "__main__":
    sys.exit(main())
