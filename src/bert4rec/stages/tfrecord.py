"""tfrecord stage: sequences -> item vocabulary + sharded TFRecords + manifest.

User u goes to shard u % num_shards and each shard draws its masks from its own seeded
generator, so the bytes are the same whatever the number of worker processes (pool_size).
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
from pathlib import Path

from bert4rec import tracking
from bert4rec.config import TfrecordParams, params_hash
from bert4rec.errors import UserError
from bert4rec.examples import SPLITS_BY_TASK, ShardJob, build_shard, feature_spec
from bert4rec.fileio import atomic_dir, write_json
from bert4rec.paths import ProjectPaths
from bert4rec.progress import progress
from bert4rec.project import stage_main
from bert4rec.records import FIRST_ITEM, MASK, PAD, shard_name
from bert4rec.vocabulary import build_vocabulary, load_vocabulary

log = logging.getLogger("bert4rec.tfrecord")

NO_EFFECT_ON_OUTPUT = {"pool_size"}  # parallelism only: the bytes are the same for any value


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    paths, params = stage_main("tfrecord", __doc__.splitlines()[0], argv)
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
