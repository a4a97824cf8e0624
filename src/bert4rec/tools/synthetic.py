"""Deterministic synthetic interaction data with the structure real logs have.

Popularity follows a Zipf law, each item has a few likely successors (a sequential pattern a
model can learn and most-popular cannot), history lengths are long-tailed, timestamps are
optional. Generation is vectorised over users, one step of every history at a time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from bert4rec import arguments
from bert4rec.errors import UserError
from bert4rec.fileio import atomic_file

FORMATS = ("sequence_lines", "csv", "tsv", "dat", "parquet", "sequence_table", "pickle")
START_TIME = 1_000_000_000  # 2001-09-09 UTC, unix seconds


def generate(
    users: int = 500,
    items: int = 200,
    mean_length: float = 30.0,
    seed: int = 0,
    min_length: int = 3,
    max_length: int = 300,
    follow_prob: float = 0.7,
    successors: int = 3,
    zipf: float = 1.1,
) -> pa.Table:
    """Events (user, item, timestamp) grouped by user, oldest first; ids start at 1."""
    if users < 1 or items < 2 or mean_length < 1 or min_length < 1 or max_length < min_length:
        raise UserError("synthetic: need users >= 1, items >= 2, mean_length >= 1, 1 <= min_length <= max_length")
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, items + 1) ** zipf
    popularity /= popularity.sum()
    cumulative = np.cumsum(popularity)
    next_items = rng.choice(items, size=(items, successors), p=popularity)
    lengths = np.clip(rng.geometric(1.0 / mean_length, size=users), min_length, max_length)
    total = int(lengths.sum())
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    sequence = np.empty(total, dtype=np.int64)
    current = np.minimum(np.searchsorted(cumulative, rng.random(users)), items - 1)
    for step in range(int(lengths.max())):
        active = np.flatnonzero(lengths > step)
        if step:
            follow = rng.random(len(active)) < follow_prob
            pick = rng.integers(0, successors, size=len(active))
            fresh = np.minimum(np.searchsorted(cumulative, rng.random(len(active))), items - 1)
            current[active] = np.where(follow, next_items[current[active], pick], fresh)
        sequence[offsets[active] + step] = current[active]
    user_ids = np.repeat(np.arange(1, users + 1), lengths)
    starts = START_TIME + rng.integers(0, 86400 * 365, size=users)
    gaps = rng.integers(0, 3600, size=total)  # zero gaps make timestamp ties, as in real logs
    gaps[offsets[:-1]] = 0
    within = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[offsets[:-1]], lengths)
    timestamps = np.repeat(starts, lengths) + within
    return pa.table({"user": user_ids, "item": sequence + 1, "timestamp": timestamps})


def write(table: pa.Table, path: str | Path, fmt: str) -> Path:
    """Write the events in one of the supported input formats (by time for event logs)."""
    path = Path(path)
    if fmt not in FORMATS:
        raise UserError(f"synthetic: unknown format '{fmt}'; expected one of {', '.join(FORMATS)}")
    by_time = table.take(np.argsort(table.column("timestamp").to_numpy(), kind="stable"))
    with atomic_file(path) as tmp:
        if fmt == "sequence_lines":
            _write_delimited(table.select(["user", "item"]), tmp, " ", header=False, gzip=path.suffix == ".gz")
        elif fmt in ("csv", "tsv"):
            _write_delimited(by_time, tmp, "," if fmt == "csv" else "\t", header=True, gzip=path.suffix == ".gz")
        elif fmt == "dat":
            rating = pa.array(np.full(len(by_time), 4, dtype=np.int64))
            lines = pc.binary_join_element_wise(
                *(pc.cast(c, pa.string()) for c in (by_time["user"], by_time["item"], rating, by_time["timestamp"])),
                "::",
            )
            _write_delimited(pa.table({"line": lines}), tmp, "\t", header=False, gzip=path.suffix == ".gz")
        elif fmt == "parquet":
            pq.write_table(by_time, tmp)
        else:
            frame = sequence_table(table)
            if fmt == "sequence_table":
                pq.write_table(frame, tmp)
            else:
                frame.to_pandas().to_pickle(tmp)  # the predecessor's input format, for its tests
    return path


def sequence_table(table: pa.Table) -> pa.Table:
    users = table.column("user").to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    offsets = np.r_[starts, len(users)].astype(np.int32)
    return pa.table(
        {
            "user_id": users[starts],
            "items": pa.ListArray.from_arrays(pa.array(offsets), table.column("item").combine_chunks()),
        }
    )


def _write_delimited(table: pa.Table, path: Path, delimiter: str, header: bool, gzip: bool) -> None:
    options = pacsv.WriteOptions(
        include_header=header, delimiter=delimiter, quoting_style="none", quoting_header="none"
    )
    sink = pa.output_stream(str(path), compression="gzip" if gzip else None)
    with sink:
        pacsv.write_csv(table, sink, write_options=options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bert4rec synth", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output file (.gz to compress text formats)")
    parser.add_argument("--format", choices=FORMATS, default="sequence_lines")
    parser.add_argument("--users", type=arguments.population, default=500)
    parser.add_argument("--items", type=arguments.catalogue_size, default=200)
    parser.add_argument("--mean-length", type=arguments.mean_length, default=30.0)
    parser.add_argument("--max-length", type=arguments.longest_history, default=300)
    parser.add_argument("--seed", type=arguments.not_negative, default=0)
    args = parser.parse_args(argv)
    table = generate(args.users, args.items, args.mean_length, args.seed, max_length=args.max_length)
    write(table, args.out, args.format)
    print(f"wrote {table.num_rows} events of {args.users} users over {args.items} items to {args.out}")
    return 0
