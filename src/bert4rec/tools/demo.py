"""`make demo`: MovieLens-1M through the whole pipeline with a short training budget.

Without --data the ratings are downloaded from GroupLens and checked against the MD5 that
GroupLens publishes beside the archive; with --data a local copy is used (offline machines).
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import json
import re
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from bert4rec.errors import UserError
from bert4rec.fileio import atomic_file
from bert4rec.workflow import make, projects

ARCHIVE_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
CHECKSUM_URL = ARCHIVE_URL + ".md5"
MEMBER = "ml-1m/ratings.dat"
CACHE = Path(".cache") / "movielens"
# A budget that finishes raw -> inference on ML-1M in well under 15 minutes on 2 CPU cores.
# Shorter sequences than the paper's 200 buy ~4x more steps for the same time on a CPU.
SETTINGS = {
    "tfrecord": {"max_seq_length": 50, "max_predictions_per_seq": 10, "pool_size": 2},
    "train_val": {"num_train_steps": 3000, "num_warmup_steps": 100, "eval_every_steps": 500,
                  "save_checkpoints_steps": 500, "training_time_limit_seconds": 480.0},
}


def _fetch(url: str, timeout: float = 60.0) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as error:
        raise UserError(
            f"cannot download {url} ({getattr(error, 'reason', error)}); offline, pass a local copy: "
            "make demo DATA=../shared/data/ml-1m/ml-1m.txt.gz"
        ) from None


def published_md5(text: str) -> str:
    """GroupLens writes `MD5 (ml-1m.zip) = <hex>`; also accept `<hex>  ml-1m.zip`."""
    found = re.search(r"\b([0-9a-fA-F]{32})\b", text)
    if not found:
        raise UserError(f"{CHECKSUM_URL}: no MD5 checksum in the published file")
    return found.group(1).lower()


def verify(data: bytes, expected: str, what: str) -> None:
    actual = hashlib.md5(data).hexdigest()
    if actual != expected:
        raise UserError(f"{what}: MD5 {actual} does not match the published {expected}; not using it")


def download(root: Path) -> Path:
    """ratings.dat of ML-1M, downloaded once into .cache/ after checking the published MD5."""
    target = root / CACHE / "ml-1m-ratings.dat"
    if target.exists():
        return target
    expected = published_md5(_fetch(CHECKSUM_URL).decode("utf-8", "replace"))
    archive = _fetch(ARCHIVE_URL, timeout=300)
    verify(archive, expected, ARCHIVE_URL)
    (root / CACHE).mkdir(parents=True, exist_ok=True)
    with atomic_file(root / CACHE / "ml-1m.zip") as tmp:
        tmp.write_bytes(archive)
    with zipfile.ZipFile(root / CACHE / "ml-1m.zip") as bundle, atomic_file(target) as tmp:
        tmp.write_bytes(bundle.read(MEMBER))
    return target


def _require_same_input(folder: Path, data: Path | None) -> None:
    """A --data other than the existing project's input would be ignored: refused instead."""
    if data is None:
        return
    inputs = sorted(p for p in (folder / "data" / "external").glob("*") if p.is_file() and p.suffix != ".dvc")
    if not any(p.name == data.name and filecmp.cmp(p, data, shallow=False) for p in inputs):
        kept = ", ".join(str(p) for p in inputs) or "none"
        raise UserError(f"{data}: project {folder.name} exists with another input ({kept}); give another --name, "
                        f"or remove {folder} to start over")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bert4rec demo", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="local copy of ML-1M (ratings.dat or ml-1m.txt[.gz]); default: download")
    parser.add_argument("--name", default="ml1m", help="project name (default ml1m)")
    args = parser.parse_args(argv)
    root = Path.cwd()
    if args.data is not None and not args.data.is_file():
        raise UserError(f"{args.data}: input file not found")
    if (root / "projects" / args.name).is_dir():
        _require_same_input(root / "projects" / args.name, args.data)
        print(f"project {args.name} exists; making it active")
        projects.activate(root, args.name)
    else:
        data = args.data or download(root)
        projects.create(root, args.name, data, SETTINGS)
        print(f"project {args.name} created from {data}")
    make.run_stage(root, "inference")
    _, params = projects.load_active(root)
    name = params.model_name()
    results = root / "projects" / args.name / "results" / name
    print("\ndone. outputs:")
    print(f"  sequences and id maps: projects/{args.name}/data/interim, projects/{args.name}/references")
    print(f"  model:                 projects/{args.name}/models/{name}")
    print(f"  results:               {results.relative_to(root)}")
    metrics = results / "test_metrics.json"
    if metrics.exists():
        values = json.loads(metrics.read_text())
        flat = {k: v for k, v in values.items() if isinstance(v, (int, float)) and k.startswith(("ndcg", "hit", "mrr"))}
        print("  test metrics:          " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(flat.items())))
    print("MLflow: `make ui`, then open http://127.0.0.1:5000 (experiment bert4rec-" + args.name + ")")
    return 0
