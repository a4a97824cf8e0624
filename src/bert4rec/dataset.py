"""tf.data readers for the tfrecord shards described by `records/manifest.json`.

Every feature is a bytes feature holding little-endian int32. Training examples are cut to
length buckets (sequences are left-padded, the model counts positions from the right), so short
histories do not pay for 200 positions. With dynamic masking the cloze masks are drawn here, per
epoch, with the same rules as `masking.cloze_mask` / `truncate_short` / `mask_last`, from
stateless random ops seeded by (seed, epoch, batch index): the same seed gives the same run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from bert4rec.errors import UserError
from bert4rec.fileio import read_json
from bert4rec.records import FIRST_ITEM, MASK, PAD

EVAL_CHUNK = 8192  # eval records parsed and length-sorted per chunk: memory stays flat


def load_manifest(records: Path) -> dict:
    return read_json(
        records / "manifest.json", "tfrecord manifest (run the tfrecord stage)",
        required=("splits", "num_tokens", "max_seq_length", "params"), hint="; rerun the tfrecord stage",
    )


def split_files(records: Path, manifest: dict, split: str, worker: int = 0, workers: int = 1) -> list[str]:
    """This worker's shard files of a split (worker w reads shards w, w + workers, ...)."""
    if split not in manifest["splits"]:
        raise UserError(
            f"{records / 'manifest.json'}: no '{split}' split (task {manifest.get('task')}); "
            f"available: {', '.join(manifest['splits'])}"
        )
    shards = manifest["splits"][split]["shards"]
    files = [str(records / shard["file"]) for i, shard in enumerate(shards) if i % workers == worker]
    for name in files:
        if not Path(name).exists():
            raise UserError(f"{name}: shard listed in the manifest is missing; rerun the tfrecord stage")
    return files


def _parser(features: dict):
    spec = {name: tf.io.FixedLenFeature([], tf.string) for name in features}

    def parse(record):
        parsed = tf.io.parse_single_example(record, spec)
        return {name: tf.io.decode_raw(parsed[name], tf.int32) for name in features}

    return parse


def read_split(records: Path, manifest: dict, split: str, worker: int = 0, workers: int = 1,
               shuffle_files_seed: int | None = None) -> tf.data.Dataset:
    """Parsed examples of a split, shards read in parallel, in a deterministic order."""
    files = split_files(records, manifest, split, worker, workers)
    features = manifest["splits"][split]["features"]
    names = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_files_seed is not None:
        names = names.shuffle(len(files), seed=shuffle_files_seed)
    dataset = names.interleave(
        tf.data.TFRecordDataset, cycle_length=max(1, min(len(files), 4)),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
    )
    return dataset.map(_parser(features), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def dynamic_mask(batch_seed, input_ids, params: dict, num_tokens: int):
    """Cloze masks for a (batch, width) block, drawn like masking.cloze_mask/truncate_short/mask_last.

    Vectorised over the batch (one stateless seed per batch): per-example map calls cost more
    CPU than the model's own step on a 2-core machine.
    """
    shape = tf.shape(input_ids)
    batch, width = shape[0], shape[1]
    predictions = params["max_predictions_per_seq"]
    seeds = tf.random.experimental.stateless_split(batch_seed, 8)
    columns = tf.range(width)[None, :]
    length = tf.reduce_sum(tf.cast(input_ids != PAD, tf.int32), axis=1)
    if params["short_seq_prob"] > 0:
        chosen = (tf.random.stateless_uniform([batch], seeds[0]) < params["short_seq_prob"]) & (length > 2)
        short = 2 + tf.cast(tf.floor(tf.random.stateless_uniform([batch], seeds[1]) * tf.cast(length - 1, tf.float32)), tf.int32)
        length = tf.where(chosen, tf.minimum(short, length), length)
        input_ids = tf.where(columns >= width - length[:, None], input_ids, PAD)
    last_only = tf.random.stateless_uniform([batch], seeds[2]) < 1.0 / (params["dupe_factor"] + 1)
    count = tf.clip_by_value(
        tf.cast(tf.round(tf.cast(length, tf.float32) * params["masked_lm_prob"]), tf.int32), 1, predictions
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
    replacement = tf.where(roll < params["mask_prob"], MASK, tf.where(keep, labels, random_items))
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


def training_batches(records: Path, manifest: dict, batch_size: int, epoch: int, seed: int,
                     buckets: int = 1, worker: int = 0, workers: int = 1, skip: int = 0,
                     shuffle_buffer: int = 20000):
    """One epoch of (input_ids, positions, labels) batches, masks drawn for this epoch.

    Batches hold examples of one length bucket, cut to the bucket width (left padding removed).
    Full batches only, so every step has the same batch size; `skip` resumes mid-epoch.
    Dynamic masks are seeded by (seed, epoch, batch index) and the batch order is seeded, so
    the same seed gives the same batches.
    """
    params = manifest["params"]
    num_tokens = manifest["num_tokens"]
    width = manifest["max_seq_length"]
    dynamic = manifest.get("masking", params.get("masking")) == "dynamic"
    dataset = read_split(records, manifest, "train", worker, workers, shuffle_files_seed=seed + epoch)
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

        dataset = dataset.group_by_window(
            bucket, lambda key, window: window.batch(batch_size, drop_remainder=True), window_size=batch_size
        )
    else:
        dataset = dataset.batch(batch_size, drop_remainder=True)
    dataset = dataset.map(cut)
    if dynamic:
        epoch_seed = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), epoch)
        dataset = dataset.enumerate().map(
            lambda index, inputs: dynamic_mask(
                tf.random.experimental.stateless_fold_in(epoch_seed, index), inputs, params, num_tokens
            ),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
        )
    return dataset.skip(skip).prefetch(tf.data.AUTOTUNE)


def eval_chunks(records: Path, manifest: dict, split: str, chunk_size: int = EVAL_CHUNK):
    """Validation/test/inference examples, `chunk_size` records at a time, as numpy arrays.

    Records are parsed a chunk at a time (one vectorised parse instead of one per record). Each
    chunk holds user_index, target, input_ids (batch, width) and the seen items as a flat array
    with per-user offsets (history_flat, history_start, history_end).
    """
    files = split_files(records, manifest, split)
    spec = {name: tf.io.FixedLenFeature([], tf.string) for name in ("user_index", "input_ids", "target", "history")}

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        history = parsed["history"]
        return {
            "user_index": tf.io.decode_raw(parsed["user_index"], tf.int32)[:, 0],
            "target": tf.io.decode_raw(parsed["target"], tf.int32)[:, 0],
            "input_ids": tf.io.decode_raw(parsed["input_ids"], tf.int32),
            "history_flat": tf.io.decode_raw(tf.strings.reduce_join(history), tf.int32),
            "history_lengths": tf.strings.length(history) // 4,
        }

    chunks = tf.data.TFRecordDataset(files, num_parallel_reads=max(1, min(len(files), 4)))
    for chunk in chunks.batch(chunk_size).map(parse).prefetch(1).as_numpy_iterator():
        lengths = chunk.pop("history_lengths").astype(np.int64)
        chunk["history_end"] = np.cumsum(lengths)
        chunk["history_start"] = chunk["history_end"] - lengths
        yield chunk


def padded_history(chunk: dict, rows: np.ndarray) -> np.ndarray:
    """The seen items of `rows`, right-padded with PAD to the longest of them."""
    begin, end = chunk["history_start"][rows], chunk["history_end"][rows]
    width = int((end - begin).max(initial=0))
    index = begin[:, None] + np.arange(width)[None, :]
    valid = index < end[:, None]
    return np.where(valid, chunk["history_flat"][np.where(valid, index, 0)], PAD).astype(np.int32)


def eval_batch_count(examples: int, batch_size: int, chunk_size: int = EVAL_CHUNK) -> int:
    """How many batches eval_batches yields for a split of `examples` records."""
    chunks, rest = divmod(examples, chunk_size)
    return chunks * -(-chunk_size // batch_size) + -(-rest // batch_size)


def eval_batches(records: Path, manifest: dict, split: str, batch_size: int, chunk_size: int = EVAL_CHUNK):
    """Batches of users, inputs (MASK last), targets and PAD-padded seen items, as numpy dicts.

    Within a chunk, users are sorted by input length (then by number of seen items) and each
    batch is cut to its longest input, so short histories are not scored through 200 positions
    (the order of users changes, not the result).
    """
    width = manifest["max_seq_length"]
    for chunk in eval_chunks(records, manifest, split, chunk_size):
        lengths = (chunk["input_ids"] != PAD).sum(axis=1)
        order = np.lexsort((chunk["history_end"] - chunk["history_start"], lengths))  # seen items pad less too
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            longest = max(int(lengths[rows].max()), 1)
            yield {
                "user_index": chunk["user_index"][rows],
                "target": chunk["target"][rows],
                "input_ids": chunk["input_ids"][rows, width - longest:],
                "history": padded_history(chunk, rows),
            }
