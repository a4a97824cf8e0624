"""multi_worker_mirrored, run for real: two worker processes on 127.0.0.1 with their own TF_CONFIG."""

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest

from bert4rec.fileio import read_json
from helpers import run_stage

from .tiny import model_dir, most_popular_valid_ndcg, new_project

pytestmark = pytest.mark.slow
BERT4REC = [sys.executable, "-m", "bert4rec.cli"]


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def launch(project, logs, tag):
    hosts = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
        scratch = logs / f"{tag}-tmp-{index}"  # each worker's temporary folder, to look for leftovers
        scratch.mkdir()
        env = {**os.environ, "BERT4REC_TRACKING": "off", "TF_CONFIG": json.dumps(config), "TMPDIR": str(scratch)}
        log = open(logs / f"{tag}-worker-{index}.log", "w")
        processes.append(subprocess.Popen([*BERT4REC, "train_val", "--project", str(project)], env=env,
                                          stdout=log, stderr=subprocess.STDOUT))
    return processes


def test_two_workers_train_resume_after_a_killed_worker_and_match_one_worker(tmp_path):
    settings = dict(num_train_steps=400, eval_every_steps=200, save_checkpoints_steps=10, deterministic_ops=True)
    single = new_project(tmp_path / "single", model_name="one", batch_size=32, **settings)
    assert run_stage("train_val", single) == 0
    one = read_json(model_dir(single, "one") / "valid_metrics.json", "metrics")["ndcg_at_10"]

    project = new_project(tmp_path / "cluster", model_name="two", batch_size=16,
                          distribution="multi_worker_mirrored", **settings)
    area = project / "checkpoints" / "two"
    first = launch(project, tmp_path, "first")
    deadline = time.time() + 300
    while not any(p.name == "ckpt-30.npz" for p in area.rglob("ckpt-*")):  # both workers past step 30
        assert time.time() < deadline and all(p.poll() is None for p in first), "training did not get going"
        time.sleep(0.2)
    first[1].send_signal(signal.SIGKILL)
    assert first[0].wait(timeout=120) == 2  # the chief notices and stops with one message
    message = (tmp_path / "first-worker-0.log").read_text()
    assert "another worker stopped" in message and "Traceback" not in message
    errors = [line for line in message.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "{{" not in errors[0] and len(errors[0]) < 500, errors
    assert "Exception ignored" not in message  # no destructor noise after the message

    second = launch(project, tmp_path, "second")
    assert [p.wait(timeout=600) for p in second] == [0, 0]
    chief_log = (tmp_path / "second-worker-0.log").read_text()
    resumed = int(chief_log.split("resumed two from step ")[1].split()[0])
    assert resumed >= 30 and f"resumed two from step {resumed}" in (tmp_path / "second-worker-1.log").read_text()
    info = read_json(model_dir(project, "two") / "model.json", "model")
    assert info["trained_steps"] == 400
    assert not area.exists()  # both workers cleaned their resumable state
    assert not list((tmp_path / "second-tmp-1").glob("bert4rec-worker-*"))  # nor a model folder of their own
    two = read_json(model_dir(project, "two") / "valid_metrics.json", "metrics")["ndcg_at_10"]
    baseline = most_popular_valid_ndcg(project)
    assert one > 1.2 * baseline and two > 1.2 * baseline
    assert abs(two - one) < 0.15 * one, (one, two)  # same global batch (2 x 16 = 32), same data


def test_two_workers_split_test_and_inference_and_merge_exactly(trained, tmp_path):
    project = tmp_path / "synth"
    shutil.copytree(trained, project, symlinks=True)
    results = project / "results" / "tiny"
    for stage in ("test", "inference"):
        assert run_stage(stage, project) == 0
    single = {name: (results / name).read_bytes() for name in ("predictions.parquet", "user_embeddings.parquet")}
    metrics = read_json(results / "test_metrics.json", "metrics")
    ranks = pd.read_parquet(results / "test_ranks.parquet")
    for name in ("test_metrics.json", "test_ranks.parquet", *single):
        (results / name).unlink()

    for stage in ("test", "inference"):
        hosts = [f"127.0.0.1:{port}" for port in free_ports(2)]
        processes = [subprocess.Popen(
            [*BERT4REC, stage, "--project", str(project)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "BERT4REC_TRACKING": "off",
                 "TF_CONFIG": json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}})})
            for i in (1, 0)]
        outputs = [p.communicate(timeout=300)[0] for p in processes]
        assert [p.returncode for p in processes] == [0, 0], outputs
    split = read_json(results / "test_metrics.json", "metrics")
    def full_ranking(report: dict, prefix: str = "") -> dict:  # sampled metrics draw negatives per worker
        flat = {}
        for key, value in report.items():
            if isinstance(value, dict):
                flat.update(full_ranking(value, f"{prefix}{key}."))
            elif not key.startswith("sampled_"):
                flat[prefix + key] = value
        return flat

    # model and baselines merge exactly (sums of reciprocal ranks up to the order of addition)
    merged, whole = full_ranking(split), full_ranking(metrics)
    assert merged.keys() == whole.keys()
    for key, value in whole.items():
        assert merged[key] == (value if isinstance(value, str) else pytest.approx(value, rel=1e-12, abs=0)), key
    pd.testing.assert_frame_equal(pd.read_parquet(results / "test_ranks.parquet"), ranks)
    for name, expected in single.items():
        pd.testing.assert_frame_equal(pd.read_parquet(results / name), pd.read_parquet(io.BytesIO(expected)))
    assert not (results / "parts").exists()
