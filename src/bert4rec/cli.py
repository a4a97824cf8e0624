"""`bert4rec <stage>`: one console entry point; each subcommand is a stage's main(argv)."""

from __future__ import annotations

import importlib
import logging
import sys

from bert4rec.errors import UserError

COMMANDS = {
    "raw": ("bert4rec.stages.raw", "input file -> per-user item sequences (Parquet)"),
    "tfrecord": ("bert4rec.stages.tfrecord", "sequences -> vocabulary + sharded TFRecords"),
    "synth": ("bert4rec.synthetic", "write a deterministic synthetic dataset (for tests and demos)"),
    "bench-data": ("bert4rec.bench_data", "time raw+tfrecord on ML-1M and a large synthetic log"),
}


def usage() -> str:
    lines = ["usage: bert4rec <command> [options]", "", "commands:"]
    lines += [f"  {name:<12} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command '{command}'\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    try:
        return module.main(rest) or 0
    except UserError as error:
        logging.getLogger("bert4rec").debug("user error", exc_info=True)
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
