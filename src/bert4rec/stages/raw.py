"""raw stage: user's interactions -> one time-ordered item sequence per user (Parquet).

Streams the input in blocks and spills events to a scratch file indexed by chunk of users, so
memory depends on the chunk size (raw.users_per_chunk), not on the number of users.
"""

from __future__ import annotations

import logging
from pathlib import Path

from bert4rec.data import readers
from bert4rec.data.sequences import Spill, decoded_ids, write_sequences
from bert4rec.errors import UserError
from bert4rec.fileio import all_or_nothing, scratch_file, write_json
from bert4rec.params import Params
from bert4rec.paths import ProjectPaths
from bert4rec.progress import progress
from bert4rec.stages.common import stage_main
from bert4rec.workflow import tracking

log = logging.getLogger("bert4rec.raw")


def run(paths: ProjectPaths, params: Params) -> dict:
    raw = params.raw
    source = paths.resolve_input(raw.input)
    description, tables = readers.read_events(source, raw)  # checks that the file is there
    before = _state(source)
    log.info("reading %s (%s)", source, description)
    with all_or_nothing():
        with scratch_file(paths.interim, "raw-spill") as spill_path, Spill(spill_path, raw.users_per_chunk) as spill:
            users, items, events_read = _spill_events(tables, spill)
            if _state(source) != before:
                raise UserError(f"{source}: the file changed while it was read (another program writing or "
                                "copying it?); nothing was written: rerun once it is complete")
            if events_read == 0:
                raise UserError(f"{source}: no interactions found; expected rows of user, item[, timestamp]")
            log.info("read %d events, %d users, %d items", events_read, len(users), len(items))
            summary = write_sequences(paths, raw, spill, decoded_ids(users), decoded_ids(items), len(items))
        summary = {
            "input": str(Path(raw.input)),
            "format": description,
            "task": raw.task,
            "split": raw.split,
            "read": {"events": events_read, "users": len(users), "items": len(items)},
            **summary,
        }
        write_json(paths.raw_summary, summary)
    log.info("kept %d users, %d items, %d interactions -> %s",
             summary["users"], summary["items"], summary["interactions"], paths.sequences)
    return summary


def _state(source: Path) -> tuple:
    found = source.stat()
    return found.st_size, found.st_mtime_ns, found.st_ino


def _spill_events(tables, spill: Spill) -> tuple[readers.FirstSeen, readers.FirstSeen, int]:
    """Encode users and items densely in order of first appearance and spill the events."""
    users, items = readers.FirstSeen(), readers.FirstSeen()
    events_read = 0
    bar = progress(desc="raw: reading", unit=" events", unit_scale=True)
    for table in tables:
        spill.append(
            readers.first_seen_codes(table.column("user"), users),
            readers.first_seen_codes(table.column("item"), items),
            *readers.event_times(table),
        )
        events_read += table.num_rows
        bar.update(table.num_rows)
    bar.close()
    return users, items, events_read


def main(argv: list[str] | None = None) -> int:
    paths, params = stage_main("raw", __doc__.splitlines()[0], argv)
    with tracking.stage_run("raw", paths, params, sections=("raw",)):
        summary = run(paths, params)
        tracking.log_metrics({k: summary[k] for k in ("read", "users", "items", "interactions", "dropped", "history_length",
                                                       "windows") if k in summary})
        tracking.log_artifact(paths.raw_summary)
    return 0
