"""Examples of every split for one shard of users: training windows (statically or
dynamically masked) and validation/test/inference examples, written as TFRecords.

User u belongs to shard u % num_shards and each shard draws from its own generator seeded by
(seed, shard), so a shard's bytes do not depend on which process builds it.

An evaluation example is one (user, target): leave-one-out gives one per user (the held-out
item); a time split gives one per event in the window that has an earlier event of the same
user, each predicted from everything before it (see data/timesplit.py). A shard's examples are
in user order, then target order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from bert4rec.data import masking
from bert4rec.data.records import FIRST_ITEM, PAD, encode_example, shard_name, write_record
from bert4rec.data.sequences import open_sequences, read_group
from bert4rec.data.timesplit import Windows, user_cuts
from bert4rec.data.vocabulary import load_vocabulary, tokens_of
from bert4rec.data.windows import eval_inputs, gather_padded, window_bounds
from bert4rec.errors import UserError
from bert4rec.params import MIN_HISTORY_BY_TASK, SPLITS_BY_TASK, TfrecordParams

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
    windows: Windows | None = None  # a time split's dates; None: leave-one-out


@dataclass
class Users:
    """A block of one shard's users: flat tokens (-1: unknown item) with each user's range, and for
    a time split the flat index where each user's validation and test windows start."""

    index: np.ndarray
    tokens: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    valid_from: np.ndarray | None = None
    test_from: np.ndarray | None = None

    def training_ends(self, task: str) -> np.ndarray:
        return self.ends - HELD_OUT[task]["train"] if self.valid_from is None else self.valid_from

    def unknown_before(self, reach: np.ndarray) -> int:
        """Items unknown to the vocabulary among each user's tokens before its flat index `reach`
        (a target that is never an input is not a history item)."""
        lengths = self.ends - self.starts
        flat = np.repeat(self.starts, lengths) + np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return int((self.tokens[flat] < 0)[flat < np.repeat(reach, lengths)].sum())

    def targets(self, split: str, task: str) -> tuple[np.ndarray, np.ndarray]:
        """(user row, flat target position) per example; inference "targets" the end of the history."""
        rows = np.arange(len(self.index))
        if split == "inference":
            return rows, self.ends
        if self.valid_from is None:
            return rows, self.ends - HELD_OUT.get(task, {}).get(split, 1)
        low, high = (self.valid_from, self.test_from) if split == "valid" else (self.test_from, self.ends)
        low = np.maximum(low, self.starts + 1)  # a target needs an earlier event
        counts = np.maximum(high - low, 0)
        rows = np.repeat(rows, counts)
        return rows, np.repeat(low, counts) + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)


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
    users_with = {split: 0 for split in splits}
    unknown = {"input_items": 0, "targets": 0}
    handles = {split: open(job.out / shard_name(split, job.shard, params.num_shards), "wb") for split in splits}
    try:
        for users in _shard_users(job, vocab):
            reach = users.starts.copy()  # per user, the end of the longest input written
            for split in splits:
                if split == "train":
                    counts[split] += _write_training(handles[split], users, job, FIRST_ITEM + len(vocab), rng)
                    np.maximum(reach, users.training_ends(job.task), out=reach)
                else:
                    written, evaluated, missed = _write_evaluation(handles[split], split, users, job)
                    counts[split] += written
                    users_with[split] += evaluated
                    unknown["targets"] += missed
                    np.maximum.at(reach, *users.targets(split, job.task))
            unknown["input_items"] += users.unknown_before(reach)
    finally:
        for handle in handles.values():
            handle.close()
    return {"shard": job.shard, "counts": counts, "users": users_with, "unknown": unknown}


def _shard_users(job: ShardJob, vocab):
    """This shard's users (Users), one row group at a time.

    Under leave-one-out every history must hold what the task holds out plus an input item
    (sequences written by the raw stage for another task would otherwise give targets from a
    neighbouring user).
    """
    source = open_sequences(job.sequences)
    shortest = MIN_HISTORY_BY_TASK[job.task] if job.windows is None else 1
    columns = ["user_index", "items"] + (["times"] if job.windows is not None else [])
    for group in range(source.num_row_groups):
        table = read_group(source, job.sequences, group, columns)
        mine = np.flatnonzero(table.column("user_index").to_numpy() % job.params.num_shards == job.shard)
        if not len(mine):
            continue
        table = table.take(pa.array(mine))
        tokens, offsets = tokens_of(table.column("items"), vocab)
        users = Users(table.column("user_index").to_numpy(), tokens, offsets[:-1], offsets[1:])
        _require_length(users, np.diff(offsets), shortest, job)
        if job.windows is not None:
            times = table.column("times").combine_chunks().flatten().to_numpy()
            users.valid_from, users.test_from = user_cuts(times, offsets, job.windows)
        yield users


def _require_length(users: "Users", lengths: np.ndarray, shortest: int, job: ShardJob) -> None:
    if (lengths < shortest).any():
        short = int(np.argmax(lengths < shortest))
        raise UserError(f"{job.sequences}: user index {users.index[short]} has {lengths[short]} items, but raw.task "
                        f"{job.task} needs at least {shortest}; rerun the raw stage with this task")


def _write_training(handle, users: Users, job: ShardJob, num_tokens: int, rng) -> int:
    known, offsets = drop_unknown(users.tokens, users.starts, users.training_ends(job.task))
    arrays = training_examples(known, offsets[:-1], offsets[1:], job.params, num_tokens, rng)
    names = ("input_ids",) if len(arrays) == 1 else ("input_ids", "masked_lm_positions", "masked_lm_ids")
    for row in zip(*arrays):
        write_record(handle, encode_example(dict(zip(names, row))))
    return len(arrays[0])


def _write_evaluation(handle, split: str, users: Users, job: ShardJob) -> tuple[int, int, int]:
    """Validation/test/inference examples: input window + [MASK], target, seen items.

    Returns (examples written, users among them, targets unknown to the vocabulary: written as
    PAD, a miss).
    """
    rows, positions = users.targets(split, job.task)
    target = np.full(len(rows), PAD, dtype=np.int64)
    unknown = 0
    if split != "inference":
        target = users.tokens[positions]
        unknown = int((target < 0).sum())
        target = np.where(target < 0, PAD, target)
    history, offsets = drop_unknown(users.tokens, users.starts[rows], positions)
    inputs = eval_inputs(history, offsets[:-1], offsets[1:], job.params.max_seq_length)
    user_index = users.index[rows]
    for i in range(len(rows)):
        write_record(handle, encode_example({
            "user_index": user_index[i:i + 1],
            "input_ids": inputs[i],
            "target": target[i:i + 1],
            "history": history[offsets[i]:offsets[i + 1]],
        }))
    return len(rows), len(np.unique(rows)), unknown
