"""The whole pipeline on a tiny synthetic project, driven the way users drive it (make, dvc, the
MLflow UI), with `.env` pointing at an MLflow tracking server and an S3-compatible DVC remote
(moto), both started here on 127.0.0.1 and stopped by PID."""

from __future__ import annotations

import json
import shutil
import subprocess

import pandas as pd
import pytest
import yaml

from .repo import TINY, flags, free_port, server

pytestmark = pytest.mark.slow

STAGES = ["raw", "tfrecord", "train_val", "test", "inference"]
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_DEFAULT_REGION": "us-east-1"}


def ran(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


def chromium_dom(url: str) -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed (.ci/run installs it: apt-get install chromium)")
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-dev-shm-usage", "--virtual-time-budget=15000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_full_pipeline_git_dvc_mlflow_server_s3(repo, events, tmp_path):
    import boto3
    import mlflow

    mlflow_port, s3_port = free_port(), free_port()
    uri, endpoint = f"http://127.0.0.1:{mlflow_port}", f"http://127.0.0.1:{s3_port}"
    store = tmp_path / "server"
    store.mkdir()
    mlflow_server = [str(repo.root / ".venv/bin/mlflow"), "server", "--workers", "1", "--host", "127.0.0.1",
                     "--port", str(mlflow_port), "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
                     "--default-artifact-root", str(store / "artifacts")]
    moto = [str(repo.root / ".venv/bin/moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)]
    with server(mlflow_server, f"{uri}/health", tmp_path, repo.env, tmp_path / "mlflow.log"), \
            server(moto, f"{endpoint}/moto-api/", tmp_path, repo.env, tmp_path / "moto.log"):
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
        s3.create_bucket(Bucket="dvc-store")
        (repo.root / ".env").write_text(
            f"MLFLOW_TRACKING_URI={uri}\nDVC_REMOTE_URL=s3://dvc-store/bert4rec\nDVC_REMOTE_ENDPOINT_URL={endpoint}\n"
            + "".join(f"{k}={v}\n" for k, v in KEYS.items())
        )
        repo.run("bert4rec", "project", "synth", str(events), *flags(TINY))
        result = repo.run("make", "-s", "inference", env={"BERT4REC_TRACKING": "on"})
        assert ran(result.stdout) == STAGES, result.stdout
        assert "dvc: pushed outputs to s3://dvc-store/bert4rec" in result.stdout

        # git: code/params committed before the stage, dvc.lock after it, both pushed to origin
        subjects = repo.commits()
        assert subjects[0] == "synth: dvc.lock after `dvc repro inference`"
        assert subjects[1] == "synth: code/params/pipeline before `dvc repro inference`"
        head = repo.git("rev-parse", "HEAD")
        assert repo.origin_head() == head
        assert repo.git("status", "--porcelain") == ""
        assert set(yaml.safe_load(repo.git("show", "HEAD:dvc.lock"))["stages"]) == set(STAGES)
        committed = repo.git("ls-tree", "-r", "--name-only", "HEAD").splitlines()
        assert "projects/synth/data/external/events.txt.dvc" in committed
        assert not [p for p in committed if p.startswith(("projects/synth/models", ".env"))
                    or (p.startswith("projects/synth/data/") and not p.endswith((".dvc", ".gitignore", "raw_summary.json")))]
        # S3 settings and credentials stay out of committed config
        assert "testing-secret" not in repo.git("show", "HEAD:.dvc/config") and "dvc-store" not in repo.git("show", "HEAD:.dvc/config")
        assert "testing-secret" in (repo.root / ".dvc/config.local").read_text()

        params = yaml.safe_load((repo.root / "params.yaml").read_text())
        model = params["train_val"]["model_name"]
        results = repo.root / "projects/synth/results" / model
        assert len(pd.read_parquet(results / "predictions.parquet")) > 0
        metrics = json.loads((results / "test_metrics.json").read_text())
        assert any(k.startswith("ndcg") for k in metrics) and any(k.startswith("hit") for k in metrics)
        shown = repo.run("dvc", "metrics", "show", "--json").stdout
        assert "ndcg" in shown and "interactions" in shown
        curves = pd.read_csv(results / "train_val_curves.csv")
        assert {"step", "train_loss", "valid_ndcg_at_10"} <= set(curves.columns) and curves["step"].is_monotonic_increasing
        plots = repo.run("dvc", "plots", "show", "--json").stdout
        assert "train_loss" in plots and "valid_ndcg_at_10" in plots

        # a second repro changes nothing
        again = repo.run("dvc", "repro", "inference")
        assert ran(again.stdout) == [] and repo.git("status", "--porcelain") == ""

        # the tracking server got one experiment for the project, a parent run, a child per stage
        assert not (repo.root / "mlflow.db").exists()
        client = mlflow.MlflowClient(uri)
        experiments = [e for e in client.search_experiments() if "synth" in e.name]
        assert [e.name for e in experiments] == ["bert4rec-synth"]
        runs = client.search_runs([experiments[0].experiment_id])
        parents = [r for r in runs if r.data.tags.get("kind") == "pipeline"]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        parent = parents[0]
        assert parent.data.tags["git_commit_outputs"] == head
        children = {r.data.tags["stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
        assert set(children) == set(STAGES)
        pointer = yaml.safe_load((repo.root / "projects/synth/data/external/events.txt.dvc").read_text())
        before_commit = repo.git("rev-parse", "HEAD~1")
        for stage, run in children.items():
            tags = run.data.tags
            assert tags["project"] == "synth" and tags["dvc_stage"] == stage and tags["experiment_name"] == "bert4rec-synth"
            assert tags["git_commit"] == before_commit and tags["git_commit_outputs"] == head
            assert tags["git_dirty"] == "false"  # code/params committed before the stage ran
            assert tags["dataset_dvc_md5"] == pointer["outs"][0]["md5"]
        assert children["train_val"].data.tags["model_name"] == model
        assert children["raw"].data.metrics["interactions"] == json.loads(
            (repo.root / "projects/synth/data/interim/raw_summary.json").read_text())["interactions"]
        test_metrics = children["test"].data.metrics
        assert any(k.startswith("ndcg_at_") for k in test_metrics) and any(k.startswith("hit_at_") for k in test_metrics)
        recorded = yaml.safe_load((repo.root / "projects/synth/config/config_mlflow.yaml").read_text())
        assert {s: v["run_id"] for s, v in recorded["stages"].items()} == {s: r.info.run_id for s, r in children.items()}

        # the model loads back from MLflow and recommends unseen items
        mlflow.set_tracking_uri(uri)
        recommender = mlflow.pyfunc.load_model(children["train_val"].data.tags["model_uri"])
        history = [int(line.split()[1]) for line in events.read_text().splitlines()[:5]]
        top = recommender.predict(pd.DataFrame({"items": [history]}))["items"][0]
        assert 0 < len(top) and not set(top) & set(history)

        # the MLflow UI in headless Chromium shows the project's run with ndcg/hit values
        page = chromium_dom(f"{uri}/#/experiments/{experiments[0].experiment_id}/runs/{children['test'].info.run_id}")
        shown_metrics = [k for k in test_metrics if k.startswith(("ndcg_at_", "hit_at_"))]
        assert "bert4rec-synth" in page
        assert all(name in page for name in shown_metrics), shown_metrics
        assert f"{test_metrics[shown_metrics[0]]:.4g}"[:5] in page

        # outputs are in the bucket: drop them and the cache, pull them back from S3
        assert s3.list_objects_v2(Bucket="dvc-store", Prefix="bert4rec/")["KeyCount"] > 0
        records = repo.root / "projects/synth/data/processed/records"
        manifest = (records / "manifest.json").read_bytes()
        shutil.rmtree(records)
        shutil.rmtree(repo.root / "projects/synth/models" / model)
        shutil.rmtree(repo.root / ".dvc" / "cache")
        repo.run("dvc", "pull")
        assert (records / "manifest.json").read_bytes() == manifest
        assert "up to date" in repo.run("dvc", "status").stdout

        # changing one training parameter re-runs train_val and what follows, nothing before it
        steps = params["train_val"]["num_train_steps"] + 4
        experiment = repo.run("dvc", "exp", "run", "-S", f"train_val.num_train_steps={steps}")
        assert ran(experiment.stdout) == ["train_val", "test", "inference"], experiment.stdout
        diff = repo.run("dvc", "params", "diff").stdout
        assert "train_val.num_train_steps" in diff and str(steps) in diff
        assert yaml.safe_load((repo.root / "projects/synth/params.yaml").read_text())["train_val"]["num_train_steps"] == steps
