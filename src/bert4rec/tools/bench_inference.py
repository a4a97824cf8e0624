"""Inference speed: the last release's code against today's, on ML-1M, in one run.

Each side runs its own code from end to end. The release's source (commit RELEASE, read from this
repository's git history) prepares its records and trains its model, as today's code does with
the params defaults; both train for the same short budget at the same model size (the weights'
values do not change the cost of scoring). Then the two time top-10 over the whole catalogue for
every user, seen items removed, at their inference batch size: each side with its own
`bench-quality` measure (the best of three passes after a warm-up), each in its own process,
alternating round by round so that the machine's changing speed hits both alike. The figure that
counts is the ratio of users per second.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

from bert4rec.arguments import at_least_one, positive
from bert4rec.errors import UserError
from bert4rec.fileio import write_json
from bert4rec.params import Params
from bert4rec.tools import bench_quality
from bert4rec.tools.benchkit import ML1M, measure, require_data, run_probe, run_stage, stage_command

RELEASE = "2402203"  # the last release (bench_speed.RELEASED is its training configuration)
REPOSITORY = Path(__file__).resolve().parents[3]
TARGET_RATIO = 2.0  # issue 12
# Run with the release's source first on the path: its own project layout and its own measure.
RELEASE_PROJECT = ("import sys; from pathlib import Path; from bert4rec.bench_quality import make_project; "
                   "make_project(Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]))")
RELEASE_PROBE = ("import json, sys; from pathlib import Path; from bert4rec.bench_quality import inference_speed; "
                 "print(json.dumps(inference_speed(Path(sys.argv[1]))))")
RELEASE_MODEL = "bench"


def release_source(work: Path) -> Path:
    """The release's src/ from git history, unpacked under work/."""
    done = subprocess.run(["git", "-C", str(REPOSITORY), "archive", "--format=tar", RELEASE, "src"],
                          capture_output=True)
    if done.returncode:
        raise UserError(f"{REPOSITORY}: the release's code (commit {RELEASE}) is not in this checkout's git history "
                        f"({done.stderr.decode(errors='replace').strip()[-300:]}); bench-inference needs a clone "
                        "with history (git fetch --unshallow)")
    target = work / f"release-{RELEASE}"
    shutil.rmtree(target, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        archive.extractall(target, filter="data")
    return target / "src"


def release_env(source: Path) -> dict:
    return {"PYTHONPATH": str(source)}


def prepare_release(work: Path, data: Path, minutes: float, logs: Path) -> tuple[Path, dict]:
    """The release's project: its records and a model trained for `minutes` by its own stages."""
    source, project = release_source(work), work / "release" / "ml1m"
    shutil.rmtree(project, ignore_errors=True)
    env, logs = release_env(source), logs / "release"
    logs.mkdir(parents=True, exist_ok=True)
    measure([sys.executable, "-c", RELEASE_PROJECT, str(project), str(data.resolve()), str(minutes)],
            logs / "project.log", env=env)
    stages = {stage: measure(stage_command(stage, project), logs / f"{stage}.log", env=env)
              for stage in ("raw", "tfrecord", "train_val")}
    return project, {"source": str(source), "stages": stages}


def prepare_today(work: Path, data: Path, minutes: float, logs: Path) -> tuple[Path, str, dict]:
    """Today's project on the params defaults (objective included), trained for `minutes`."""
    objective = Params().train_val.objective
    project = bench_quality.make_project(work / "today" / "ml1m", data, objective, minutes)
    stages = {stage: run_stage(stage, project, logs / "today") for stage in ("raw", "tfrecord", "train_val")}
    return project, f"bench-{objective}", {"objective": objective, "stages": stages}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bert4rec bench-inference", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ML1M)
    parser.add_argument("--work", type=Path, default=Path("bench/inference"))
    parser.add_argument("--out", type=Path, default=Path("bench/inference.json"))
    parser.add_argument("--rounds", type=at_least_one, default=5)
    parser.add_argument("--train-minutes", type=positive, default=0.5, help="training budget of each side's model")
    parser.add_argument("--probe", nargs=2, help=argparse.SUPPRESS)  # internal: PROJECT MODEL, timed in this process
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(bench_quality.inference_speed(Path(args.probe[0]), args.probe[1])))
        return 0
    require_data(args.data, "ML-1M", "ml-1m")
    logs = args.work / "logs"
    print(f"the release ({RELEASE}) and today's code: records and a {args.train_minutes:g}-minute model each ...",
          flush=True)
    release_project, release_setup = prepare_release(args.work, args.data, args.train_minutes, logs)
    today_project, today_model, today_setup = prepare_today(args.work, args.data, args.train_minutes, logs)
    probes = {
        "release": ([sys.executable, "-c", RELEASE_PROBE, str(release_project)],
                    release_env(Path(release_setup["source"]))),
        "today": ([sys.executable, "-m", "bert4rec.cli", "bench-inference", "--probe", str(today_project),
                   today_model], None),
    }
    rounds: dict[str, list[dict]] = {side: [] for side in probes}
    for round_ in range(args.rounds):
        for side, (command, env) in probes.items():
            rounds[side].append(run_probe(command, f"bench-inference: the {side} probe", env))
            print(f"round {round_ + 1} {side}: {rounds[side][-1]['users_per_second']:,.0f} users/s "
                  f"(passes {rounds[side][-1]['seconds_per_pass']} s)", flush=True)
    result = summarise(rounds, {"release": release_setup, "today": today_setup}, args.train_minutes)
    write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("ratio", "target_ratio", "met", "summary")}, indent=2))
    return 0


def summarise(rounds: dict[str, list[dict]], setup: dict, train_minutes: float) -> dict:
    summary = {side: {"users_per_second": statistics.median(r["users_per_second"] for r in runs),
                      "users": runs[0]["users"], "batch_size": runs[0]["batch_size"]}
               for side, runs in rounds.items()}
    ratio = summary["today"]["users_per_second"] / summary["release"]["users_per_second"]
    return {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "release": RELEASE,
            "measure": "top-10 over the whole catalogue, seen items removed, every user; per round the best of "
                       "3 passes after a warm-up; summary: the median round",
            "ratio": round(ratio, 2), "target_ratio": TARGET_RATIO, "met": ratio >= TARGET_RATIO,
            "summary": summary, "rounds": rounds, "train_minutes": train_minutes, "setup": setup}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
