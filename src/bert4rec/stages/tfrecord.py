"""tfrecord stage: sequences -> item vocabulary + sharded TFRecords + manifest.

User u goes to shard u % num_shards and each shard draws its masks from its own seeded
generator, so the bytes are the same whatever the number of worker processes (pool_size).
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pyarrow.parquet as pq

from bert4rec.cli import exit_on_signal
from bert4rec.data.examples import ShardJob, build_shard, feature_spec
from bert4rec.data.manifest import NO_EFFECT_ON_OUTPUT, Manifest, Shard, Split, UnknownItems, VocabularyRef
from bert4rec.data.records import FIRST_ITEM, MASK, PAD, shard_name
from bert4rec.data.sequences import open_sequences, time_unit
from bert4rec.data.timesplit import Windows, split_dates
from bert4rec.data.vocabulary import build_vocabulary, load_vocabulary
from bert4rec.errors import UserError
from bert4rec.fileio import all_or_nothing, atomic_dir
from bert4rec.params import SPLITS_BY_TASK, Params, params_hash
from bert4rec.paths import ProjectPaths
from bert4rec.progress import progress
from bert4rec.stages.common import stage_main
from bert4rec.workflow import tracking

log = logging.getLogger("bert4rec.tfrecord")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run(paths: ProjectPaths, params: Params) -> Manifest:
    tf_params, task = params.tfrecord, params.raw.task
    users = open_sequences(paths.sequences).metadata.num_rows
    if tf_params.num_shards > users:
        raise UserError(f"tfrecord.num_shards ({tf_params.num_shards}) is more than the {users} users in "
                        f"{paths.sequences}; every shard needs a user: set tfrecord.num_shards to at most {users}")
    windows = Windows.for_split(params.raw, time_unit(pq.read_schema(paths.sequences)),
                                f"{paths.sequences}: raw.split is time but the sequences have no timestamps; "
                                "rerun the raw stage")
    with all_or_nothing():
        if task in ("train_val_test", "train_val"):
            before = None if windows is None else windows.validation_start
            vocab_size = build_vocabulary(paths.sequences, paths.item_vocab, before)
            log.info("item vocabulary: %d items -> %s", vocab_size, paths.item_vocab)
        else:
            vocab_size = len(load_vocabulary(paths.item_vocab))
            log.info("reusing item vocabulary %s (%d items)", paths.item_vocab, vocab_size)
        with atomic_dir(paths.records) as out:
            manifest = _write_records(paths, params, vocab_size, windows, out)
            manifest.write(out)
        manifest = Manifest.read(paths.records)
    _report(manifest, paths)
    return manifest


def _write_records(paths: ProjectPaths, params: Params, vocab_size: int, windows: Windows | None,
                   out: Path) -> Manifest:
    tf_params, task = params.tfrecord, params.raw.task
    jobs = [ShardJob(s, paths.sequences, paths.item_vocab, out, tf_params, task, windows)
            for s in range(tf_params.num_shards)]
    results = _build_shards(jobs, min(tf_params.pool_size, tf_params.num_shards))
    return Manifest(
        task=task, masking=tf_params.masking, params=tf_params,
        params_hash=params_hash(tf_params, exclude=NO_EFFECT_ON_OUTPUT),
        vocabulary=VocabularyRef(file=str(paths.item_vocab.relative_to(paths.root)), sha256=sha256(paths.item_vocab)),
        vocab_size=vocab_size, num_tokens=vocab_size + FIRST_ITEM,
        special_tokens={"pad": PAD, "mask": MASK, "first_item": FIRST_ITEM},
        max_seq_length=tf_params.max_seq_length, max_predictions_per_seq=tf_params.max_predictions_per_seq,
        num_shards=tf_params.num_shards,
        splits={split: _split(split, results, out, tf_params) for split in SPLITS_BY_TASK[task]},
        unknown_items=UnknownItems(**{key: sum(r["unknown"][key] for r in results)
                                      for key in ("input_items", "targets")}),
        split_method=params.raw.split,
        split_dates=None if windows is None else split_dates(params.raw),
    )


def _build_shards(jobs: list[ShardJob], workers: int) -> list[dict]:
    if workers == 1:
        return [build_shard(job) for job in progress(jobs, desc="tfrecord: shards")]
    # spawn, not fork: the caller may run threads (MLflow's; TensorFlow's in a test or a notebook),
    # and a child forked while one of them holds a lock deadlocks; workers import only data code.
    # concurrent.futures, not multiprocessing.Pool: a worker killed from outside (the kernel's
    # out-of-memory killer) breaks the pool with an error, where Pool waits for its shard forever.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=exit_on_signal)
    try:
        return list(progress(pool.map(build_shard, jobs), total=len(jobs), desc="tfrecord: shards"))
    except BrokenProcessPool:
        raise UserError(f"a tfrecord worker process died before finishing its shard (killed from outside; out of "
                        f"memory?); nothing was written. Rerun, or lower tfrecord.pool_size ({workers})") from None
    finally:
        pool.shutdown(cancel_futures=True)


def _split(split: str, results: list[dict], out: Path, tf_params) -> Split:
    names = [shard_name(split, r["shard"], tf_params.num_shards) for r in results]
    return Split(
        examples=sum(r["counts"][split] for r in results),
        users=None if split == "train" else sum(r["users"][split] for r in results),
        features=feature_spec(split, tf_params),
        shards=[Shard(file=name, examples=r["counts"][split], sha256=sha256(out / name)) for name, r in zip(names, results)],
    )


def _report(manifest: Manifest, paths: ProjectPaths) -> None:
    unknown = manifest.unknown_items
    if unknown.input_items or unknown.targets:
        log.warning("%d history items and %d targets are not in the vocabulary: dropped from inputs, "
                    "targets count as misses", unknown.input_items, unknown.targets)
    log.info("wrote %s -> %s", ", ".join(f"{s}: {info.examples} examples" for s, info in manifest.splits.items()),
             paths.records)


def main(argv: list[str] | None = None) -> int:
    paths, params = stage_main("tfrecord", __doc__.splitlines()[0], argv)
    with tracking.stage_run("tfrecord", paths, params, sections=("raw", "tfrecord")):
        manifest = run(paths, params)
        tracking.log_metrics({
            "examples": {split: info.examples for split, info in manifest.splits.items()},
            "vocab_size": manifest.vocab_size,
            "unknown_items": manifest.unknown_items.model_dump(),
        })
        tracking.log_artifact(manifest.path)
    return 0
