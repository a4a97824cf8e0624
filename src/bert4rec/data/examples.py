"""Examples of every split for one shard of users: training windows (statically or
dynamically masked) and validation/test/inference examples, written as TFRecords.

User u belongs to shard u % num_shards and each shard draws from its own generator seeded by
(seed, shard), so a shard's bytes do not depend on which process builds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from bert4rec.data import masking
from bert4rec.data.records import FIRST_ITEM, PAD, encode_example, shard_name, write_record
from bert4rec.data.sequences import open_sequences, read_group
from bert4rec.data.vocabulary import load_vocabulary, tokens_of
from bert4rec.data.windows import eval_inputs, gather_padded, window_bounds
from bert4rec.errors import UserError
from bert4rec.params import MIN_HISTORY_BY_TASK, TfrecordParams

SPLITS_BY_TASK = {
    "train_val_test": ("train", "valid", "test", "inference"),
    "train_val": ("train", "valid", "inference"),
    "test": ("test",),
    "inference": ("inference",),
}
# How many items at the end of a history each split holds out.
HELD_OUT = {"train_val_test": {"train": 2, "valid": 2, "test": 1}, "train_val": {"train": 1, "valid": 1}}


@dataclass(frozen=True)
class ShardJob:
    shard: int
    sequences: Path
    vocab: Path
    out: Path
    params: TfrecordParams
    task: str


def feature_spec(split: str, params: TfrecordParams) -> dict:
    length, predictions = params.max_seq_length, params.max_predictions_per_seq
    if split == "train":
        spec = {"input_ids": length}
        if params.masking == "static":
            spec.update(masked_lm_positions=predictions, masked_lm_ids=predictions)
        return spec
    return {"user_index": 1, "input_ids": length, "target": 1, "history": -1}


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


def training_examples(tokens, starts, ends, params: TfrecordParams, num_tokens, rng):
    """Static masking: dupe_factor masked copies + one mask-last example per window."""
    window = params.max_seq_length - 1  # room for the [MASK] slot, as in evaluation
    step = None if params.prop_sliding_window == -1 else max(1, int(params.prop_sliding_window * params.max_seq_length))
    rows, begin, stop = window_bounds(ends - starts, window, step)
    keep = stop > begin
    rows, begin, stop = rows[keep], begin[keep], stop[keep]
    windows = gather_padded(tokens, starts[rows] + begin, starts[rows] + stop, params.max_seq_length)
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
    """Write every split's examples for the users of one shard; returns counts per split."""
    params = job.params
    vocab = load_vocabulary(job.vocab)
    rng = np.random.default_rng([params.seed, job.shard])
    splits = SPLITS_BY_TASK[job.task]
    counts = {split: 0 for split in splits}
    unknown = {"input_items": 0, "targets": 0}
    handles = {split: open(job.out / shard_name(split, job.shard, params.num_shards), "wb") for split in splits}
    try:
        for users, tokens, starts, ends in _shard_users(job, vocab):
            for split in splits:
                if split == "train":
                    counts[split] += _write_training(handles[split], tokens, starts, ends, job, FIRST_ITEM + len(vocab), rng)
                else:
                    unknown["targets"] += _write_evaluation(handles[split], split, users, tokens, starts, ends, job)
                    counts[split] += len(users)
            unknown["input_items"] += int((tokens < 0).sum())
    finally:
        for handle in handles.values():
            handle.close()
    return {"shard": job.shard, "counts": counts, "unknown": unknown}


def _shard_users(job: ShardJob, vocab):
    """(user indices, flat tokens, starts, ends) of this shard's users, one row group at a time.

    Every history must hold what the task holds out plus an input item (sequences written by
    the raw stage for another task would otherwise give targets from a neighbouring user).
    """
    source = open_sequences(job.sequences)
    shortest = MIN_HISTORY_BY_TASK[job.task]
    for group in range(source.num_row_groups):
        table = read_group(source, job.sequences, group, ["user_index", "items"])
        mine = np.flatnonzero(table.column("user_index").to_numpy() % job.params.num_shards == job.shard)
        if not len(mine):
            continue
        table = table.take(pa.array(mine))
        tokens, offsets = tokens_of(table.column("items"), vocab)
        users, lengths = table.column("user_index").to_numpy(), np.diff(offsets)
        if (lengths < shortest).any():
            short = int(np.argmax(lengths < shortest))
            raise UserError(f"{job.sequences}: user index {users[short]} has {lengths[short]} items, but raw.task "
                            f"{job.task} needs at least {shortest}; rerun the raw stage with this task")
        yield users, tokens, offsets[:-1], offsets[1:]


def _write_training(handle, tokens, starts, ends, job: ShardJob, num_tokens: int, rng) -> int:
    known, offsets = drop_unknown(tokens, starts, ends - HELD_OUT[job.task]["train"])
    arrays = training_examples(known, offsets[:-1], offsets[1:], job.params, num_tokens, rng)
    names = ("input_ids",) if len(arrays) == 1 else ("input_ids", "masked_lm_positions", "masked_lm_ids")
    for row in zip(*arrays):
        write_record(handle, encode_example(dict(zip(names, row))))
    return len(arrays[0])


def _write_evaluation(handle, split: str, users, tokens, starts, ends, job: ShardJob) -> int:
    """Validation/test/inference examples: input window + [MASK], target, seen items.

    Returns how many targets are unknown to the vocabulary (written as PAD: a miss).
    """
    held = 0 if split == "inference" else HELD_OUT.get(job.task, {}).get(split, 1)
    target = np.full(len(users), PAD, dtype=np.int64)
    unknown = 0
    if held:
        target = tokens[ends - held]
        unknown = int((target < 0).sum())
        target = np.where(target < 0, PAD, target)
    history, offsets = drop_unknown(tokens, starts, ends - held)
    inputs = eval_inputs(history, offsets[:-1], offsets[1:], job.params.max_seq_length)
    for i in range(len(users)):
        write_record(handle, encode_example({
            "user_index": users[i:i + 1],
            "input_ids": inputs[i],
            "target": target[i:i + 1],
            "history": history[offsets[i]:offsets[i + 1]],
        }))
    return unknown
