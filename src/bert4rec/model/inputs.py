"""tf.data readers for the tfrecord shards described by the manifest.

Every feature is a bytes feature holding little-endian int32. Training examples are cut to
length buckets (sequences are left-padded, the model counts positions from the right), so short
histories do not pay for 200 positions. With dynamic masking the cloze masks are drawn here, per
epoch, with the same rules as `data.masking` (cloze_mask / truncate_short / mask_last), from
stateless random ops seeded by (seed, epoch, batch index): the same seed gives the same run.
Evaluation records come out in increasing user order, a chunk at a time (memory stays flat).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import tensorflow as tf

from bert4rec.data.manifest import Manifest
from bert4rec.data.records import FIRST_ITEM, MASK, PAD
from bert4rec.params import TfrecordParams

EVAL_CHUNK = 8192  # eval records parsed, merged and length-sorted per chunk: memory stays flat
EVAL_FEATURES = ("user_index", "input_ids", "target", "history")


def _parser(features: dict):
    spec = {name: tf.io.FixedLenFeature([], tf.string) for name in features}

    def parse(record):
        parsed = tf.io.parse_single_example(record, spec)
        return {name: tf.io.decode_raw(parsed[name], tf.int32) for name in features}

    return parse


def read_split(manifest: Manifest, split: str, worker: int = 0, workers: int = 1,
               shuffle_files_seed: int | None = None) -> tf.data.Dataset:
    """Parsed examples of a split, shards read in parallel, in a deterministic order."""
    files = [str(path) for path in manifest.shard_files(split, worker, workers)]
    names = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_files_seed is not None:
        names = names.shuffle(len(files), seed=shuffle_files_seed)
    dataset = names.interleave(
        tf.data.TFRecordDataset, cycle_length=max(1, min(len(files), 4)),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
    )
    return dataset.map(_parser(manifest.split(split).features), num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True)


def dynamic_mask(batch_seed, input_ids, params: TfrecordParams, num_tokens: int):
    """Cloze masks for a (batch, width) block, drawn like masking.cloze_mask/truncate_short/mask_last.

    Vectorised over the batch (one stateless seed per batch): per-example map calls cost more
    CPU than the model's own step on a 2-core machine.
    """
    shape = tf.shape(input_ids)
    batch, width = shape[0], shape[1]
    predictions = params.max_predictions_per_seq
    seeds = tf.random.experimental.stateless_split(batch_seed, 8)
    columns = tf.range(width)[None, :]
    length = tf.reduce_sum(tf.cast(input_ids != PAD, tf.int32), axis=1)
    if params.short_seq_prob > 0:
        chosen = (tf.random.stateless_uniform([batch], seeds[0]) < params.short_seq_prob) & (length > 2)
        short = 2 + tf.cast(tf.floor(tf.random.stateless_uniform([batch], seeds[1]) * tf.cast(length - 1, tf.float32)), tf.int32)
        length = tf.where(chosen, tf.minimum(short, length), length)
        input_ids = tf.where(columns >= width - length[:, None], input_ids, PAD)
    last_only = tf.random.stateless_uniform([batch], seeds[2]) < 1.0 / (params.dupe_factor + 1)
    count = tf.clip_by_value(
        tf.cast(tf.round(tf.cast(length, tf.float32) * params.masked_lm_prob), tf.int32), 1, predictions
    )
    keys = tf.where(input_ids == PAD, 2.0, tf.random.stateless_uniform(shape, seeds[3]))
    order = tf.argsort(keys, axis=1, stable=True)[:, :predictions]
    order = tf.concat([order, tf.fill([batch, predictions - tf.shape(order)[1]], width)], 1)  # width < predictions
    used = tf.range(predictions)[None, :] < count[:, None]
    positions = tf.sort(tf.where(used, order, width), axis=1)
    used = positions < width
    positions = tf.where(used, positions, 0)
    labels = tf.where(used, tf.gather(input_ids, positions, batch_dims=1), PAD)
    roll = tf.random.stateless_uniform([batch, predictions], seeds[4])
    keep = tf.random.stateless_uniform([batch, predictions], seeds[5]) < 0.5
    random_items = tf.random.stateless_uniform([batch, predictions], seeds[6], FIRST_ITEM, num_tokens, dtype=tf.int32)
    replacement = tf.where(roll < params.mask_prob, MASK, tf.where(keep, labels, random_items))
    rows = tf.broadcast_to(tf.range(batch)[:, None], [batch, predictions])
    index = tf.boolean_mask(tf.stack([rows, positions], -1), used)
    masked = tf.tensor_scatter_nd_update(input_ids, index, tf.boolean_mask(replacement, used))
    first_slot = tf.range(predictions)[None, :] == 0
    last_inputs = tf.where(columns == width - 1, MASK, input_ids)
    last_positions = tf.where(first_slot, width - 1, 0)
    last_labels = tf.where(first_slot, input_ids[:, -1:], PAD)
    pick = last_only[:, None]
    return (
        tf.where(pick, last_inputs, masked),
        tf.where(pick, last_positions, positions),
        tf.where(pick, last_labels, labels),
    )


def bucket_lengths(max_seq_length: int, buckets: int) -> list[int]:
    """Bucket widths: `buckets` equal steps up to max_seq_length (1 = no bucketing)."""
    step = -(-max_seq_length // max(buckets, 1))
    return sorted({min(max_seq_length, step * (i + 1)) for i in range(max(buckets, 1))})


def training_batches(manifest: Manifest, batch_size: int, epoch: int, seed: int,
                     buckets: int = 1, worker: int = 0, workers: int = 1, skip: int = 0,
                     limit: int | None = None, shuffle_buffer: int = 20000, objective: str = "masked"):
    """One epoch of (input_ids, positions, labels) batches, masks drawn for this epoch; for the
    causal objective one-element (windows,) batches, unmasked.

    Batches hold examples of one length bucket, cut to the bucket width (left padding removed),
    but for the last ones of the epoch, which gather the buckets' remainders. Full batches only,
    so every step has the same batch size (fewer than one batch of windows left out per epoch); `limit` cuts the epoch to that many
    batches (several workers take the same number of steps); `skip` resumes mid-epoch.
    Dynamic masks are seeded by (seed, epoch, batch index) and the batch order is seeded, so
    the same seed gives the same batches.
    """
    params, num_tokens, width = manifest.params, manifest.num_tokens, manifest.max_seq_length
    dynamic = manifest.masking == "dynamic"
    dataset = read_split(manifest, "train", worker, workers, shuffle_files_seed=seed + epoch)
    if dynamic:
        dataset = dataset.map(lambda e: e["input_ids"])
    else:
        dataset = dataset.map(lambda e: (e["input_ids"], e["masked_lm_positions"], e["masked_lm_ids"]))
    dataset = dataset.shuffle(shuffle_buffer, seed=seed * 1000003 + epoch, reshuffle_each_iteration=False)
    bounds = bucket_lengths(width, buckets)

    def cut(*batch):
        """Drop the columns that are PAD in every row (at most down to the bucket width)."""
        inputs = batch[0]
        longest = tf.reduce_max(tf.reduce_sum(tf.cast(inputs != PAD, tf.int32), axis=1))
        cut_width = tf.gather(tf.constant(bounds), tf.searchsorted(tf.constant(bounds), [longest], side="left")[0])
        offset = width - cut_width
        if dynamic:
            return inputs[:, offset:]
        return inputs[:, offset:], tf.maximum(batch[1] - offset, 0), batch[2]

    if len(bounds) > 1:
        def bucket(*example):
            length = tf.reduce_sum(tf.cast(example[0] != PAD, tf.int32))
            return tf.cast(tf.searchsorted(tf.constant(bounds), [length], side="left")[0], tf.int64)

        # Each bucket's last, partial batch comes at the end of the epoch; unbatched and batched
        # again together (full batches pass through unchanged), they make batches of mixed
        # lengths, so a bucket holding fewer windows than a batch is still trained on.
        dataset = dataset.group_by_window(
            bucket, lambda key, window: window.batch(batch_size), window_size=batch_size
        ).unbatch()
    dataset = dataset.batch(batch_size, drop_remainder=True)
    dataset = dataset.map(cut)
    if objective == "causal":
        dataset = dataset.map(lambda windows: (windows,))
    elif dynamic:
        epoch_seed = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), epoch)
        dataset = dataset.enumerate().map(
            lambda index, inputs: dynamic_mask(
                tf.random.experimental.stateless_fold_in(epoch_seed, index), inputs, params, num_tokens
            ),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
        )
    if limit is not None:
        dataset = dataset.take(limit)
    return dataset.skip(skip).prefetch(tf.data.AUTOTUNE)


def batches_per_epoch(manifest: Manifest, batch_size: int, buckets: int, worker: int = 0, workers: int = 1) -> int:
    """How many batches training_batches yields per epoch for a worker: full batches per bucket,
    then those of the buckets' remainders together."""
    width = manifest.max_seq_length
    bounds = tf.constant(bucket_lengths(width, buckets))
    lengths = read_split(manifest, "train", worker, workers).map(
        lambda e: tf.reduce_sum(tf.cast(e["input_ids"] != PAD, tf.int32)), num_parallel_calls=tf.data.AUTOTUNE)
    keys = np.fromiter(lengths.batch(65536).map(lambda x: tf.searchsorted(bounds, x, side="left"))
                       .unbatch().as_numpy_iterator(), dtype=np.int64)
    per_bucket = np.bincount(keys, minlength=len(bucket_lengths(width, buckets)))
    return int((per_bucket // batch_size).sum() + (per_bucket % batch_size).sum() // batch_size)


@dataclass
class EvalRows:
    """Evaluation records as arrays: one row per user; seen items as a flat array + offsets."""

    user_index: np.ndarray  # (n,)
    target: np.ndarray  # (n,) token, PAD = none or unknown to the vocabulary
    input_ids: np.ndarray  # (n, max_seq_length): the window, [MASK] last
    history: np.ndarray  # flat seen tokens
    offsets: np.ndarray  # (n + 1,): user i saw history[offsets[i]:offsets[i + 1]]

    def __len__(self) -> int:
        return len(self.user_index)

    def take(self, rows: np.ndarray) -> "EvalRows":
        lengths = np.diff(self.offsets)[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        index = np.arange(offsets[-1]) - np.repeat(offsets[:-1] - self.offsets[rows], lengths)
        return EvalRows(self.user_index[rows], self.target[rows], self.input_ids[rows], self.history[index], offsets)

    @staticmethod
    def concat(parts: list["EvalRows"]) -> "EvalRows":
        ends = np.cumsum([0] + [p.offsets[-1] for p in parts])
        offsets = np.concatenate([[0]] + [p.offsets[1:] + base for p, base in zip(parts, ends[:-1])])
        return EvalRows(*(np.concatenate([getattr(p, name) for p in parts])
                          for name in ("user_index", "target", "input_ids", "history")), offsets.astype(np.int64))

    def padded_history(self, rows: np.ndarray) -> np.ndarray:
        """The seen items of `rows`, right-padded with PAD to the longest of them."""
        begin, end = self.offsets[rows], self.offsets[rows + 1]
        width = int((end - begin).max(initial=0))
        index = begin[:, None] + np.arange(width)[None, :]
        valid = index < end[:, None]
        return np.where(valid, self.history[np.where(valid, index, 0)], PAD).astype(np.int32)


def _parse_eval(serialized):
    parsed = tf.io.parse_example(serialized, {name: tf.io.FixedLenFeature([], tf.string) for name in EVAL_FEATURES})
    history = parsed["history"]
    return {
        "user_index": tf.io.decode_raw(parsed["user_index"], tf.int32)[:, 0],
        "target": tf.io.decode_raw(parsed["target"], tf.int32)[:, 0],
        "input_ids": tf.io.decode_raw(parsed["input_ids"], tf.int32),
        "history": tf.io.decode_raw(tf.strings.reduce_join(history), tf.int32),
        "lengths": tf.strings.length(history) // 4,
    }


def _shard_stream(path, batch: int):
    for block in tf.data.TFRecordDataset(str(path)).batch(batch).map(_parse_eval).prefetch(1).as_numpy_iterator():
        offsets = np.zeros(len(block["lengths"]) + 1, dtype=np.int64)
        np.cumsum(block["lengths"], out=offsets[1:])
        yield EvalRows(block["user_index"], block["target"], block["input_ids"], block["history"], offsets)


def eval_chunks(manifest: Manifest, split: str, chunk_size: int = EVAL_CHUNK, worker: int = 0, workers: int = 1):
    """A split's records in increasing user order, `chunk_size` users at a time.

    Each shard file is in user order; the shards are merged: rows up to the smallest "last user
    read" among the shards still being read are safe to emit in order.
    """
    files = manifest.shard_files(split, worker, workers)
    streams = [_shard_stream(path, max(64, chunk_size // max(len(files), 1))) for path in files]
    buffers: list[EvalRows | None] = [None] * len(streams)
    ready: list[EvalRows] = []
    while streams:
        for i, stream in enumerate(streams):
            if buffers[i] is None or not len(buffers[i]):
                buffers[i] = next(stream, None)
        alive = [i for i, b in enumerate(buffers) if b is not None]
        frontier = min((buffers[i].user_index[-1] for i in alive), default=None)
        parts = []
        for i in alive:
            rows = buffers[i]
            cut = int(np.searchsorted(rows.user_index, frontier, side="right"))
            parts.append(rows.take(np.arange(cut)))
            buffers[i] = rows.take(np.arange(cut, len(rows)))
        streams = [s for i, s in enumerate(streams) if buffers[i] is not None]
        buffers = [b for b in buffers if b is not None]
        if parts:
            merged = EvalRows.concat(parts)
            ready.append(merged.take(np.argsort(merged.user_index, kind="stable")))
        while sum(len(r) for r in ready) >= chunk_size or (not streams and ready):
            pending = EvalRows.concat(ready)
            size = min(chunk_size, len(pending))
            yield pending.take(np.arange(size))
            ready = [pending.take(np.arange(size, len(pending)))] if size < len(pending) else []


def first_histories(manifest: Manifest, split: str):
    """eval_chunks with each user's first record only: a user with several targets (time split)
    counts once, with the history before the window (later histories hold earlier targets)."""
    previous = -1
    for chunk in eval_chunks(manifest, split):
        first = np.flatnonzero(np.diff(chunk.user_index, prepend=previous) != 0)
        previous = chunk.user_index[-1]
        yield chunk.take(first)


def _user_keys(users: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random 64-bit key per user (splitmix64): the same user, the same key."""
    with np.errstate(over="ignore"):
        z = users.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def sample_rows(manifest: Manifest, split: str, count: int, seed: int) -> EvalRows:
    """The records of the `count` users of a split with the smallest seeded keys (a fixed random
    sample; every record of a user with several, as a time split has), in user order; one pass
    over the records, memory bounded by the sample."""
    kept: EvalRows | None = None
    for chunk in eval_chunks(manifest, split):
        pool = chunk if kept is None else EvalRows.concat([kept, chunk])
        users = np.unique(pool.user_index)
        if len(users) > count:
            chosen = users[np.argpartition(_user_keys(users, seed), count - 1)[:count]]
            pool = pool.take(np.flatnonzero(np.isin(pool.user_index, chosen)))
        kept = pool
    return kept.take(np.argsort(kept.user_index, kind="stable"))


@dataclass
class EvalBatch:
    rows: np.ndarray  # positions of these users in their chunk
    user_index: np.ndarray
    target: np.ndarray
    input_ids: np.ndarray  # cut to the longest input of the batch
    history: np.ndarray  # PAD-padded seen items


def chunk_batches(chunk: EvalRows, batch_size: int, width: int):
    """Batches of one chunk, users sorted by input length (then seen items), each cut to its
    longest input, so short histories are not scored through max_seq_length positions."""
    lengths = (chunk.input_ids != PAD).sum(axis=1)
    order = np.lexsort((np.diff(chunk.offsets), lengths))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        longest = max(int(lengths[rows].max()), 1)
        yield EvalBatch(rows, chunk.user_index[rows], chunk.target[rows], chunk.input_ids[rows, width - longest:],
                        chunk.padded_history(rows))


def eval_batches(manifest: Manifest, split: str, batch_size: int, chunk_size: int = EVAL_CHUNK,
                 worker: int = 0, workers: int = 1):
    """Every batch of a split (or of this worker's shards of it), chunk after chunk."""
    for chunk in eval_chunks(manifest, split, chunk_size, worker, workers):
        yield from chunk_batches(chunk, batch_size, manifest.max_seq_length)


def prefetched(items: Iterable, depth: int = 2) -> Iterator:
    """`items`, produced up to `depth` ahead by a background thread: reading and batching
    records overlaps the scoring (TensorFlow releases the GIL while it computes). An error
    in the thread is raised here; stopping early stops the thread."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as error:  # handed to the consumer
            put((_END, error))

    thread = threading.Thread(target=produce, name="bert4rec-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()


_END = object()


def eval_batch_count(examples: int, batch_size: int, chunk_size: int = EVAL_CHUNK) -> int:
    """How many batches the chunks of a split of `examples` records make."""
    chunks, rest = divmod(examples, chunk_size)
    return chunks * -(-chunk_size // batch_size) + -(-rest // batch_size)
