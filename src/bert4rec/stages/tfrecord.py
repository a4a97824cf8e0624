"""tfrecord stage: sequences -> item vocabulary + sharded TFRecords + manifest.

User u goes to shard u % num_shards and each shard draws its masks from its own seeded
generator, so the bytes are the same whatever the number of worker processes (pool_size).
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bert4rec import masking, readers, tracking
from bert4rec.config import TfrecordParams, params_hash
from bert4rec.errors import UserError
from bert4rec.fileio import atomic_dir, atomic_file, write_json
from bert4rec.paths import ProjectPaths
from bert4rec.progress import progress
from bert4rec.project import configure_logging, open_project, stage_parser
from bert4rec.records import FIRST_ITEM, MASK, PAD, encode_example, shard_name, write_record

log = logging.getLogger("bert4rec.tfrecord")

SPLITS_BY_TASK = {
    "train_val_test": ("train", "valid", "test", "inference"),
    "train_val": ("train", "valid", "inference"),
    "test": ("test",),
    "inference": ("inference",),
}
NO_EFFECT_ON_OUTPUT = {"pool_size"}  # parallelism only: the bytes are the same for any value
# How many items at the end of a history each split holds out: (history end, target) offsets.
HELD_OUT = {"train_val_test": {"train": 2, "valid": 2, "test": 1}, "train_val": {"train": 1, "valid": 1}}


@dataclass(frozen=True)
class ShardJob:
    shard: int
    sequences: Path
    vocab: Path
    out: Path
    params: TfrecordParams
    task: str


def build_vocabulary(sequences: Path, out: Path) -> int:
    """Items by descending frequency (ties: first appearance); token = rank + 2."""
    source = pq.ParquetFile(sequences)
    seen = readers.FirstSeen(source.schema_arrow.field("items").type.value_type)
    counts = np.zeros(0, dtype=np.int64)
    for group in range(source.num_row_groups):
        flat = source.read_row_group(group, columns=["items"]).column("items").combine_chunks().flatten()
        codes = readers.first_seen_codes(pa.chunked_array([flat]), seen)
        counts = np.concatenate([counts, np.zeros(len(seen) - len(counts), dtype=np.int64)])
        np.add.at(counts, codes, 1)
    order = np.argsort(-counts, kind="stable")
    ids = seen.values.take(pa.array(order))
    table = pa.table(
        {
            "token": np.arange(FIRST_ITEM, FIRST_ITEM + len(order), dtype=np.int32),
            "item_id": ids,
            "count": counts[order],
        }
    )
    with atomic_file(out) as tmp:
        pq.write_table(table, tmp)
    return len(order)


def load_vocabulary(path: Path) -> pa.Array:
    """Item ids in token order (token = position + 2)."""
    if not path.exists():
        raise UserError(
            f"{path}: no saved item vocabulary; it is written when a model is trained "
            "(raw.task train_val_test or train_val), and test/inference reuse it"
        )
    return pq.read_table(path, columns=["item_id"]).column("item_id").combine_chunks()


def tokens_of(items: pa.ChunkedArray, vocab: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Flat tokens (-1 = unknown to the vocabulary) and per-user offsets."""
    lists = items.combine_chunks()
    offsets = lists.offsets.to_numpy().astype(np.int64)
    flat = lists.flatten()
    if flat.type != vocab.type:  # e.g. integer ids in the vocabulary, string ids in new data
        flat, vocab = pc.cast(flat, pa.string()), pc.cast(vocab, pa.string())
    codes = pc.index_in(flat, value_set=vocab).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.where(codes >= 0, codes + FIRST_ITEM, -1), offsets


def training_examples(tokens, starts, ends, params: TfrecordParams, num_tokens, rng):
    """Static masking: dupe_factor masked copies + one mask-last example per window."""
    window = params.max_seq_length - 1  # room for the [MASK] slot, as in evaluation
    step = None if params.prop_sliding_window == -1 else max(1, int(params.prop_sliding_window * params.max_seq_length))
    rows, begin, stop = masking.window_bounds(ends - starts, window, step)
    keep = stop > begin
    rows, begin, stop = rows[keep], begin[keep], stop[keep]
    windows = masking.gather_padded(tokens, starts[rows] + begin, starts[rows] + stop, params.max_seq_length)
    lengths = stop - begin
    if params.masking == "dynamic":
        return [windows]
    parts = []
    for _ in range(params.dupe_factor):
        truncated, short = masking.truncate_short(windows, lengths, params.short_seq_prob, rng)
        parts.append(
            masking.cloze_mask(
                truncated, short, rng, params.masked_lm_prob, params.max_predictions_per_seq,
                params.mask_prob, num_tokens, FIRST_ITEM,
            )
        )
    parts.append(masking.mask_last(windows, params.max_predictions_per_seq))
    inputs, positions, labels = (np.concatenate(column) for column in zip(*parts))
    order = rng.permutation(len(inputs))
    return [inputs[order], positions[order], labels[order]]


def build_shard(job: ShardJob) -> dict:
    params = job.params
    vocab = load_vocabulary(job.vocab)
    num_tokens = FIRST_ITEM + len(vocab)
    rng = np.random.default_rng([params.seed, job.shard])
    splits = SPLITS_BY_TASK[job.task]
    counts = {split: 0 for split in splits}
    unknown = {"input_items": 0, "targets": 0}
    handles = {split: open(job.out / shard_name(split, job.shard, params.num_shards), "wb") for split in splits}
    try:
        source = pq.ParquetFile(job.sequences)
        for group in range(source.num_row_groups):
            table = source.read_row_group(group, columns=["user_index", "items"])
            users = table.column("user_index").to_numpy()
            mine = np.flatnonzero(users % params.num_shards == job.shard)
            if not len(mine):
                continue
            table = table.take(pa.array(mine))
            tokens, offsets = tokens_of(table.column("items"), vocab)
            starts, ends = offsets[:-1], offsets[1:]
            users = table.column("user_index").to_numpy()
            for split in splits:
                if split == "train":
                    train_tokens, train_offsets = drop_unknown(tokens, starts, ends - HELD_OUT[job.task]["train"])
                    arrays = training_examples(
                        train_tokens, train_offsets[:-1], train_offsets[1:], params, num_tokens, rng
                    )
                    names = ("input_ids",) if len(arrays) == 1 else ("input_ids", "masked_lm_positions", "masked_lm_ids")
                    for row in zip(*arrays):
                        write_record(handles[split], encode_example(dict(zip(names, row))))
                    counts[split] += len(arrays[0])
                    continue
                held = 0 if split == "inference" else HELD_OUT.get(job.task, {}).get(split, 1)
                target = np.full(len(users), PAD, dtype=np.int64)
                if held:
                    target = tokens[ends - held]
                    unknown["targets"] += int((target < 0).sum())
                    target = np.where(target < 0, PAD, target)
                hist, hist_offsets = drop_unknown(tokens, starts, ends - held)
                window_start = np.maximum(hist_offsets[1:] - (params.max_seq_length - 1), hist_offsets[:-1])
                inputs = masking.gather_padded(hist, window_start, hist_offsets[1:], params.max_seq_length - 1)
                inputs = np.concatenate([inputs, np.full((len(users), 1), MASK, dtype=np.int32)], axis=1)
                for i in range(len(users)):
                    write_record(
                        handles[split],
                        encode_example(
                            {
                                "user_index": users[i : i + 1],
                                "input_ids": inputs[i],
                                "target": target[i : i + 1],
                                "history": hist[hist_offsets[i] : hist_offsets[i + 1]],
                            }
                        ),
                    )
                counts[split] += len(users)
            unknown["input_items"] += int((tokens < 0).sum())
    finally:
        for handle in handles.values():
            handle.close()
    return {"shard": job.shard, "counts": counts, "unknown": unknown}


def drop_unknown(tokens: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """tokens[starts[i]:ends[i]] per user, without unknown (-1) items; returns (flat, offsets)."""
    lengths = np.maximum(ends - starts, 0)
    owner = np.repeat(np.arange(len(starts)), lengths)
    index = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths) + np.repeat(starts, lengths)
    values = tokens[index]
    known = values >= 0
    kept = np.bincount(owner[known], minlength=len(starts))
    offsets = np.zeros(len(starts) + 1, dtype=np.int64)
    np.cumsum(kept, out=offsets[1:])
    return values[known], offsets


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def feature_spec(split: str, params: TfrecordParams) -> dict:
    length, predictions = params.max_seq_length, params.max_predictions_per_seq
    if split == "train":
        spec = {"input_ids": length}
        if params.masking == "static":
            spec.update(masked_lm_positions=predictions, masked_lm_ids=predictions)
        return spec
    return {"user_index": 1, "input_ids": length, "target": 1, "history": -1}


def run(paths: ProjectPaths, params: TfrecordParams, task: str) -> dict:
    if not paths.sequences.exists():
        raise UserError(f"{paths.sequences}: sequences not found; run the raw stage first")
    if task in ("train_val_test", "train_val"):
        vocab_size = build_vocabulary(paths.sequences, paths.item_vocab)
        log.info("item vocabulary: %d items -> %s", vocab_size, paths.item_vocab)
    else:
        vocab_size = len(load_vocabulary(paths.item_vocab))
        log.info("reusing item vocabulary %s (%d items)", paths.item_vocab, vocab_size)
    with atomic_dir(paths.records) as out:
        jobs = [ShardJob(s, paths.sequences, paths.item_vocab, out, params, task) for s in range(params.num_shards)]
        workers = min(params.pool_size, params.num_shards)
        if workers > 1:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                results = list(progress(pool.imap(build_shard, jobs), total=len(jobs), desc="tfrecord: shards"))
        else:
            results = [build_shard(job) for job in progress(jobs, desc="tfrecord: shards")]
        splits = SPLITS_BY_TASK[task]
        manifest = {
            "task": task,
            "masking": params.masking,
            "params": params.model_dump(mode="json", exclude=NO_EFFECT_ON_OUTPUT),
            "params_hash": params_hash(params, exclude=NO_EFFECT_ON_OUTPUT),
            "vocabulary": {"file": str(paths.item_vocab.relative_to(paths.root)), "sha256": sha256(paths.item_vocab)},
            "vocab_size": vocab_size,
            "num_tokens": vocab_size + FIRST_ITEM,
            "special_tokens": {"pad": PAD, "mask": MASK, "first_item": FIRST_ITEM},
            "max_seq_length": params.max_seq_length,
            "max_predictions_per_seq": params.max_predictions_per_seq,
            "num_shards": params.num_shards,
            "splits": {
                split: {
                    "examples": sum(r["counts"][split] for r in results),
                    "features": feature_spec(split, params),
                    "shards": [
                        {"file": shard_name(split, r["shard"], params.num_shards), "examples": r["counts"][split],
                         "sha256": sha256(out / shard_name(split, r["shard"], params.num_shards))}
                        for r in results
                    ],
                }
                for split in splits
            },
            "unknown_items": {
                key: sum(r["unknown"][key] for r in results) for key in ("input_items", "targets")
            },
        }
        write_json(out / "manifest.json", manifest)
    unknown = manifest["unknown_items"]
    if unknown["input_items"] or unknown["targets"]:
        log.warning(
            "%d history items and %d targets are not in the vocabulary: dropped from inputs, "
            "targets count as misses", unknown["input_items"], unknown["targets"],
        )
    log.info(
        "wrote %s -> %s",
        ", ".join(f"{s}: {manifest['splits'][s]['examples']} examples" for s in splits), paths.records,
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("tfrecord", __doc__.splitlines()[0])
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    paths, params = open_project(args.project)
    with tracking.stage_run("tfrecord", paths, params.model_dump(mode="json", include={"raw", "tfrecord"})):
        manifest = run(paths, params.tfrecord, params.raw.task)
        tracking.log_metrics(
            {
                "examples": {split: info["examples"] for split, info in manifest["splits"].items()},
                "vocab_size": manifest["vocab_size"],
                "unknown_items": manifest["unknown_items"],
            }
        )
        tracking.log_artifact(paths.records / "manifest.json")
    return 0
