"""`make <stage>` when things go wrong: a killed training run, two runs at once, a tracking server
that stops in the middle of train_val. Real git, DVC and MLflow in a temporary repository."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import mlflow
import pytest

from .repo import BIN, TINY, flags, free_port, server

pytestmark = pytest.mark.faults

# long enough to be interrupted (a few hundred steps of the tiny model take ~30 s here)
SLOW = {**TINY, "train_val": {**TINY["train_val"], "num_train_steps": 300, "eval_every_steps": 100,
                              "save_checkpoints_steps": 20, "deterministic_ops": True}}


def start(repo, *args, env=None) -> subprocess.Popen:
    """A command in its own process group (make -> bert4rec run -> dvc repro -> stage)."""
    command = [str(BIN / args[0]) if args[0] in ("bert4rec", "dvc") else args[0], *args[1:]]
    return subprocess.Popen(command, cwd=repo.root, env={**repo.env, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal,
    # even when this suite runs in the background (where a shell starts its jobs with SIGINT ignored)


def wait_for(condition, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def checkpoints(repo):
    return list((repo.root / "projects/synth/checkpoints").rglob("ckpt-*.npz"))


def test_killed_make_train_val_resumes_and_marks_its_runs_killed(repo, events):
    repo.run("bert4rec", "project", "synth", str(events), *flags(SLOW))
    on = {"BERT4REC_TRACKING": "on"}
    repo.run("make", "-s", "tfrecord", env=on)
    first = start(repo, "make", "-s", "train_val", env=on)
    wait_for(lambda: any(p.name == "ckpt-40.npz" for p in checkpoints(repo)), "a checkpoint")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()

    again = repo.run("make", "-s", "train_val", env=on)
    output = again.stdout + again.stderr
    step = int(output.split("resumed ")[1].split(" from step ")[1].split()[0])
    assert step >= 40, output[-3000:]
    assert "was left RUNNING by a process that is gone; marked KILLED" in output
    assert not checkpoints(repo) or all("models" in str(p) for p in checkpoints(repo))  # the area is cleaned
    client = mlflow.MlflowClient(f"sqlite:///{repo.root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bert4rec-synth").experiment_id
    runs = client.search_runs([experiment], filter_string="tags.stage = 'train_val'")
    statuses = sorted(r.info.status for r in runs)  # the killed parent + child, the new parent + child
    assert statuses == ["FINISHED", "FINISHED", "KILLED", "KILLED"], statuses


def test_a_second_make_stops_at_once_and_the_first_finishes(repo, events):
    repo.run("bert4rec", "project", "synth", str(events), *flags(SLOW))
    repo.run("make", "-s", "tfrecord")
    first = start(repo, "make", "-s", "train_val")
    lock = repo.root / ".dvc/tmp/bert4rec-run.lock"
    wait_for(lambda: lock.exists() and "make train_val" in lock.read_text(), "the first run's lock")
    wait_for(lambda: checkpoints(repo), "training to start")
    started = time.time()
    second = repo.run("make", "-s", "raw", check=False)
    assert second.returncode != 0 and time.time() - started < 30
    assert "the repository is busy: `make train_val` (pid" in second.stderr and "Traceback" not in second.stderr
    plain = repo.run("dvc", "repro", "train_val", check=False)  # DVC refuses a plain repro of the busy stage
    assert plain.returncode != 0 and "lock" in (plain.stdout + plain.stderr).lower()
    output, _ = first.communicate(timeout=600)
    assert first.returncode == 0, output[-3000:]
    assert "up to date" in repo.run("dvc", "status", "train_val").stdout.lower()  # nothing half-written


def test_tracking_server_stopping_mid_train_val_keeps_outputs_and_sends_them_later(repo, events, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    store = tmp_path / "server"
    store.mkdir()
    command = [str(BIN / "mlflow"), "server", "--workers", "1", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--default-artifact-root",
               str(store / "artifacts")]
    (repo.root / ".env").write_text(f"MLFLOW_TRACKING_URI={uri}\n")
    repo.run("bert4rec", "project", "synth", str(events), *flags(SLOW))
    on = {"BERT4REC_TRACKING": "on"}
    client = mlflow.MlflowClient(uri)
    with server(command, f"{uri}/health", tmp_path, repo.env, tmp_path / "mlflow.log"):
        repo.run("make", "-s", "tfrecord", env=on)
        training = start(repo, "make", "-s", "train_val", env=on)

        def logging_metrics():
            experiment = client.get_experiment_by_name("bert4rec-synth")
            runs = client.search_runs([experiment.experiment_id], filter_string="tags.stage = 'train_val'")
            return any("train_loss" in r.data.metrics for r in runs)

        wait_for(logging_metrics, "train_val to log to the server")
    output, _ = training.communicate(timeout=600)  # the server is gone now
    model = next((repo.root / "projects/synth/models").iterdir())
    assert (model / "weights.npz").exists() and (model / "saved_model").is_dir()
    assert "MLflow tracking server stopped answering" in output and "Traceback" not in output
    assert any((repo.root / ".mlflow-pending").iterdir())
    steps = repo.root / f"projects/synth/results/{model.name}/train_val_curves.csv"
    expected = [int(line.split(",")[0]) for line in steps.read_text().splitlines()[1:]]

    with server(command, f"{uri}/health", tmp_path, repo.env, tmp_path / "mlflow-again.log"):
        assert "sent" in repo.run("bert4rec", "sync", env=on).stdout
        experiment = client.get_experiment_by_name("bert4rec-synth")
        run = client.search_runs([experiment.experiment_id], filter_string="tags.stage = 'train_val' and "
                                 "attributes.run_name = 'train_val'")[0]
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert run.info.status == "FINISHED" and "model_uri" in run.data.tags
        assert sorted(m.step for m in history) == [s for s in expected if s % SLOW["train_val"]["log_every_steps"] == 0]
        assert "best_valid_ndcg_at_10" in run.data.metrics
    assert not (repo.root / ".mlflow-pending").exists() or not any((repo.root / ".mlflow-pending").iterdir())


def fingerprints(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_stage_failing_under_make_leaves_its_earlier_outputs(repo, events):
    """DVC deletes a stage's outputs before running it; a failed run puts them back, so the next
    `make` does not commit their deletion."""
    repo.run("bert4rec", "project", "synth", str(events), *flags(TINY))
    repo.run("make", "-s", "raw")
    interim = repo.root / "projects/synth/data/interim"
    before = fingerprints(interim)
    data = next((repo.root / "projects/synth/data/external").glob("events*"))
    lines = data.read_text().splitlines()
    data.write_text("\n".join(lines[:5] + ["# a comment mid-file"] + lines[5:]) + "\n")
    failed = repo.run("make", "-s", "raw", check=False)
    assert failed.returncode != 0 and "is a comment" in failed.stderr and "Traceback" not in failed.stderr
    assert "earlier outputs restored" in failed.stdout
    assert fingerprints(interim) == before
    assert not repo.git("ls-files", "--deleted").strip()


def test_ctrl_c_on_make_train_val_closes_its_parent_run_as_killed(repo, events):
    repo.run("bert4rec", "project", "synth", str(events), *flags(SLOW))
    on = {"BERT4REC_TRACKING": "on"}
    repo.run("make", "-s", "tfrecord", env=on)
    records = fingerprints(repo.root / "projects/synth/data/processed")
    training = start(repo, "make", "-s", "train_val", env=on)
    wait_for(lambda: any(p.name == "ckpt-40.npz" for p in checkpoints(repo)), "a checkpoint")
    os.killpg(training.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
    output, _ = training.communicate(timeout=120)
    assert training.returncode != 0 and "Traceback" not in output, output[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{repo.root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bert4rec-synth").experiment_id
    runs = client.search_runs([experiment], filter_string="tags.stage = 'train_val'")
    assert sorted(r.info.status for r in runs) == ["KILLED", "KILLED"], output[-3000:]  # no run left RUNNING
    assert fingerprints(repo.root / "projects/synth/data/processed") == records


def test_sigterm_to_the_run_alone_stops_dvc_and_the_stage_with_it(repo, events):
    repo.run("bert4rec", "project", "synth", str(events), *flags(SLOW))
    repo.run("make", "-s", "tfrecord")
    training = start(repo, "bert4rec", "run", "train_val")
    wait_for(lambda: any(p.name == "ckpt-40.npz" for p in checkpoints(repo)), "a checkpoint")
    os.kill(training.pid, signal.SIGTERM)  # a scheduler stopping the command, not its process group
    output, _ = training.communicate(timeout=120)
    assert training.returncode == 143 and "Traceback" not in output, output[-3000:]
    # nothing of it runs on: DVC's lock is free and the next run resumes at once
    again = repo.run("make", "-s", "train_val")
    assert "resumed" in again.stdout + again.stderr
