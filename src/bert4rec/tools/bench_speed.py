"""Training speed: the last release's configuration against today's defaults, in one run.

Both train on ML-1M for the same number of steps, each in its own process (precision policy and
compilation are process-wide), alternating rounds so the machine's changing speed hits both
alike; the figure that counts is the ratio of sequences per second. FLOPs per step are counted
from the shapes (model/flops.py), so the achieved GFLOP/s shows the distance to the hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bert4rec.arguments import at_least_one, not_negative
from bert4rec.fileio import write_json
from bert4rec.params import Params, merge, params_hash
from bert4rec.tools.benchkit import ML1M, require_data, run_probe, run_stage, scratch_project

# The configuration `make bench-quality` trained with in the last release (commit 2402203).
RELEASED = {
    "tfrecord": {"max_seq_length": 200, "max_predictions_per_seq": 40, "masked_lm_prob": 0.2, "mask_prob": 1.0,
                 "dupe_factor": 10, "prop_sliding_window": 0.5, "masking": "dynamic"},
    "train_val": {"objective": "masked", "loss": "full_softmax", "batch_size": 128, "length_buckets": 8,
                  "mixed_precision": "off", "jit_compile": False, "learning_rate": 0.003, "weight_decay": 0.01,
                  "weight_average_decay": None,
                  "model": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 256,
                            "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.0,
                            "max_position_embeddings": 200, "layer_norm": "pre", "block": "transformer"}},
}


def configurations() -> dict[str, dict]:
    defaults = Params().model_dump(mode="json")
    released = merge(json.loads(json.dumps(defaults)), RELEASED)
    return {"released": released, "defaults": defaults}


def prepare(work: Path, data: Path, params: dict) -> Path:
    """An ML-1M project with records for these tfrecord params (shared by equal ones)."""
    tfrecord = Params.model_validate(params).tfrecord
    project = work / f"ml1m-{params_hash(tfrecord, exclude={'pool_size'})[:8]}"
    if not (project / "data" / "processed" / "records" / "manifest.json").exists():
        scratch_project(project, data, {"tfrecord": params["tfrecord"]})
        for stage in ("raw", "tfrecord"):
            run_stage(stage, project, project / "logs")
    return project


def probe(project: Path, params: dict, steps: int, warmup: int) -> dict:
    """Time `steps` training steps after `warmup` ones (this process only)."""
    from bert4rec.data.manifest import Manifest
    from bert4rec.model import flops, runtime
    from bert4rec.model.trainer import Trainer

    tv = Params.model_validate(params).train_val
    manifest = Manifest.read(project / "data" / "processed" / "records")
    strategy = runtime.start(tv.distribution, tv.seed, tv.deterministic_ops, tv.mixed_precision)
    trainer = Trainer(tv, manifest, np.ones(manifest.vocab_size), project / "speed-logs", project / "speed-ckpt",
                      strategy=strategy)
    batches, timed = every_batch(trainer), []
    for index in range(warmup + steps):
        batch = next(batches)
        if index == warmup:
            started = time.perf_counter()
        loss = trainer.train_step(batch)
        if index >= warmup:
            timed.append(batch)  # their FLOPs are counted after the clock stops
    float(loss)  # wait for the last step
    total = time.perf_counter() - started
    shapes = [shape_of(batch, tv.objective) for batch in timed]
    work = sum(flops.step_flops(tv, tv.batch_size, width, targets, manifest.num_tokens) for width, targets in shapes)
    return {"steps": steps, "seconds": round(total, 3), "sequences_per_second": round(steps * tv.batch_size / total, 1),
            # items predicted per second: a causal window predicts each of its items, a masked one ~20 %
            "targets_per_second": round(sum(targets for _, targets in shapes) / total, 1),
            "gflop_per_step": round(work / steps / 1e9, 2), "achieved_gflop_per_second": round(work / total / 1e9, 1)}


def every_batch(trainer):
    """Training batches epoch after epoch (a probe may be longer than one epoch: 80 steps on ML-1M)."""
    epoch = 0
    while True:
        yield from trainer.epoch_batches(epoch)
        epoch += 1


def shape_of(batch, objective: str) -> tuple[int, int]:
    """(encoder width, predicted positions) of a training batch."""
    if objective == "causal":
        windows = batch[0].numpy()
        return windows.shape[1] - 1, int(((windows[:, :-1] > 0) & (windows[:, 1:] > 0)).sum())
    return batch[0].shape[1], int((batch[2].numpy() > 0).sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bert4rec bench-speed", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ML1M)
    parser.add_argument("--work", type=Path, default=Path("bench/speed"))
    parser.add_argument("--out", type=Path, default=Path("bench/speed.json"))
    parser.add_argument("--steps", type=at_least_one, default=150, help="timed steps per round and configuration")
    parser.add_argument("--warmup", type=not_negative, default=20, help="steps before timing (tracing, compilation)")
    parser.add_argument("--rounds", type=at_least_one, default=3)
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: one timing in this process
    args = parser.parse_args(argv)
    if args.probe:
        spec = json.loads(args.probe)
        print(json.dumps(probe(Path(spec["project"]), spec["params"], args.steps, args.warmup)))
        return 0
    require_data(args.data, "ML-1M", "ml-1m")
    configs = configurations()
    projects = {name: prepare(args.work, args.data, params) for name, params in configs.items()}
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    for round_ in range(args.rounds):
        for name, params in configs.items():
            spec = json.dumps({"project": str(projects[name]), "params": params})
            command = [sys.executable, "-m", "bert4rec.cli", "bench-speed", "--probe", spec,
                       "--steps", str(args.steps), "--warmup", str(args.warmup)]
            runs[name].append(run_probe(command, f"bench-speed: the {name} probe"))
            print(f"round {round_ + 1} {name}: {runs[name][-1]}", flush=True)
    result = summarise(configs, runs)
    write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("ratio", "summary")}, indent=2))
    return 0


def summarise(configs: dict, runs: dict[str, list[dict]]) -> dict:
    summary = {name: {key: statistics.median(r[key] for r in rounds)
                      for key in ("sequences_per_second", "targets_per_second", "gflop_per_step",
                                  "achieved_gflop_per_second")}
               for name, rounds in runs.items()}
    ratio = summary["defaults"]["sequences_per_second"] / summary["released"]["sequences_per_second"]
    return {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "ratio": round(ratio, 2), "target_ratio": 2.0, "met": ratio >= 2.0, "summary": summary, "rounds": runs,
            "configurations": {name: {k: v for k, v in params.items() if k in ("tfrecord", "train_val")}
                               for name, params in configs.items()}}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
