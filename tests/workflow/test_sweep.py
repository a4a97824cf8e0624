"""`make sweep`, `make compare` and `make promote` on a tiny synthetic project in a temporary git
repository: real DVC queue experiments, MLflow runs in the local sqlite store, the Model Registry."""

from __future__ import annotations

import csv
import io
import json

import pandas as pd
import pytest
import yaml

from .repo import TINY, flags

pytestmark = pytest.mark.slow

ON = {"BERT4REC_TRACKING": "on"}
LR, DROPOUT = "train_val.learning_rate", "train_val.model.hidden_dropout_prob"
GRID = {"grid": {LR: [0.001, 0.01], DROPOUT: [0.0, 0.3]},
        "set": {"train_val.num_train_steps": 10, "train_val.eval_every_steps": 5}, "max_points": 4}
NAMES = [f"grid-1-p{i}" for i in range(1, 5)]


def write_sweep(repo, name: str, content: dict) -> None:
    folder = repo.root / "config" / "sweeps"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(content, sort_keys=False))


def mlflow_runs(repo):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo.root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bert4rec-synth")
    return client, client.search_runs([experiment.experiment_id], max_results=1000)


def children(runs, parent):
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def check_dvc_experiments(repo):
    assert sorted(repo.run("dvc", "exp", "list", "--name-only").stdout.split()) == NAMES
    shown = list(csv.DictReader(io.StringIO(repo.run("dvc", "exp", "show", "--csv").stdout)))
    points = {row["Experiment"]: (float(row[LR]), float(row[DROPOUT])) for row in shown if row["Experiment"] in NAMES}
    assert sorted(points.values()) == [(0.001, 0.0), (0.001, 0.3), (0.01, 0.0), (0.01, 0.3)]


def check_mlflow_sweep(repo) -> dict:
    """One sweep run, four point runs under it, each holding its stage runs; returns the points."""
    _, runs = mlflow_runs(repo)
    sweeps = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    assert len(sweeps) == 1 and sweeps[0].info.status == "FINISHED"
    assert sweeps[0].data.params == {"train_val.num_train_steps": "10", "train_val.eval_every_steps": "5"}
    points = {r.info.run_name: r for r in children(runs, sweeps[0])}
    assert sorted(points) == NAMES
    for name, point in points.items():
        assert point.info.status == "FINISHED" and point.data.tags["dvc_exp_name"] == name
        assert set(point.data.params) == {LR, DROPOUT}
        stages = {r.data.tags["stage"]: r for r in children(runs, point)}
        assert {"train_val", "test", "inference"} <= set(stages), (name, stages)
        assert all(r.data.tags["dvc_exp_name"] == name for r in stages.values())
        assert point.data.metrics["valid_ndcg_at_10"] == pytest.approx(stages["train_val"].data.metrics["best_valid_ndcg_at_10"])
        assert point.data.metrics["test_ndcg_at_10"] == pytest.approx(stages["test"].data.metrics["ndcg_at_10"])
        assert float(point.data.params[LR]) == float(stages["train_val"].data.params[LR])
    return {name: (point, {r.data.tags["stage"]: r for r in children(runs, point)}) for name, point in points.items()}


def check_comparison(repo, points) -> str:
    """The CSV lists the points by validation NDCG@10 (best first), then the two baselines."""
    with open(repo.root / "projects/synth/results/sweeps/grid-1.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["experiment"] for r in rows[4:]] == ["most_popular", "item_to_item"]
    valid = [float(r["valid_ndcg_at_10"]) for r in rows[:4]]
    assert valid == sorted(valid, reverse=True) and sorted(r["experiment"] for r in rows[:4]) == NAMES
    for row in rows[:4]:
        metrics = points[row["experiment"]][0].data.metrics
        assert float(row["valid_ndcg_at_10"]) == pytest.approx(metrics["valid_ndcg_at_10"])
        assert float(row["training_seconds"]) > 0 and float(row[LR]) in (0.001, 0.01)
    shown = repo.run("bert4rec", "compare").stdout
    assert shown.index(rows[0]["experiment"]) < shown.index(rows[3]["experiment"]) < shown.index("item_to_item")
    return rows[0]["experiment"]


def check_champion(repo, events, exp_name, points, version: str):
    import mlflow

    client, _ = mlflow_runs(repo)
    champion = client.get_model_version_by_alias("bert4rec-synth", "champion")
    train_run = points[exp_name][1]["train_val"]
    assert str(champion.version) == version and champion.tags["dvc_exp_name"] == exp_name
    assert champion.run_id == train_run.info.run_id and champion.source == train_run.data.tags["model_uri"]
    mlflow.set_tracking_uri(f"sqlite:///{repo.root / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/bert4rec-synth@champion")
    history = [int(line.split()[1]) for line in events.read_text().splitlines()[:5]]
    top = model.predict(pd.DataFrame({"items": [history]}))["items"][0]
    assert 0 < len(top) and not set(top) & set(history)


def check_compare_beside_damage_and_open_runs(repo):
    """A damaged older record is skipped with a warning; an earlier sweep whose runs were left open
    (its waiting stopped) is closed by the next compare; runs of another store are a warning."""
    folder = repo.root / "projects/synth/results/sweeps"
    (folder / "broken-1.json").write_text("x")
    client, runs = mlflow_runs(repo)
    experiment = client.get_experiment_by_name("bert4rec-synth").experiment_id
    record = json.loads((folder / "grid-1.json").read_text())
    sweep_run = client.create_run(experiment, tags={"kind": "sweep"}).info.run_id
    point_run = client.create_run(experiment, tags={"kind": "sweep_point"}).info.run_id
    earlier = {**record, "id": "grid-0", "created": "2000-01-01T00:00:00+00:00", "mlflow_run_id": sweep_run,
               "points": [{**record["points"][0], "mlflow_run_id": point_run}]}
    (folder / "grid-0.json").write_text(json.dumps(earlier))
    result = repo.run("bert4rec", "compare", env=ON)
    assert "sweep grid-1" in result.stdout and "broken-1.json" in result.stderr
    assert client.get_run(sweep_run).info.status == "FINISHED" and client.get_run(point_run).info.status == "FINISHED"
    assert client.get_run(point_run).data.metrics["valid_ndcg_at_10"] > 0
    elsewhere = {**ON, "MLFLOW_TRACKING_URI": f"sqlite:///{repo.root.parent / 'elsewhere.db'}"}
    result = repo.run("bert4rec", "compare", env=elsewhere)
    assert "sweep grid-1" in result.stdout and "is not in the tracking store" in result.stderr
    (folder / "grid-0.json").unlink()
    (folder / "grid-0.csv").unlink(missing_ok=True)


def test_sweep_compare_and_promote(repo, events):
    repo.run("bert4rec", "project", "synth", str(events), *flags(TINY))
    write_sweep(repo, "grid", GRID)
    result = repo.run("make", "-s", "sweep", "SWEEP=grid", env=ON, timeout=1800)
    assert "sweep grid-1: 4 DVC experiments queued" in result.stdout
    assert "grid-1-p1 (train_val.learning_rate=0.001, train_val.model.hidden_dropout_prob=0.0) is running" in result.stdout
    check_dvc_experiments(repo)
    points = check_mlflow_sweep(repo)
    best = check_comparison(repo, points)
    assert best == max(points, key=lambda n: points[n][0].data.metrics["valid_ndcg_at_10"])
    check_compare_beside_damage_and_open_runs(repo)

    result = repo.run("make", "-s", "promote", env=ON)
    assert f"promoting experiment {best} (best valid ndcg_at_10 of sweep grid-1" in result.stdout
    assert "registry: bert4rec-synth version 1 is now @champion (the first champion)" in result.stdout
    assert repo.commits()[0].startswith(f"synth: promote experiment {best}")
    assert repo.git("status", "--porcelain") == "" and repo.origin_head() == repo.git("rev-parse", "HEAD")
    params = yaml.safe_load((repo.root / "params.yaml").read_text())
    assert params["train_val"]["learning_rate"] == float(points[best][0].data.params[LR])
    lock = yaml.safe_load((repo.root / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"raw", "tfrecord", "train_val", "test", "inference"}
    check_champion(repo, events, best, points, "1")

    other = next(name for name in NAMES if name != best)
    result = repo.run("make", "-s", "promote", f"EXP={other}", env=ON)
    assert "version 2 is now @champion (was version 1, which keeps its number)" in result.stdout
    check_champion(repo, events, other, points, "2")
    client, _ = mlflow_runs(repo)
    assert client.get_model_version("bert4rec-synth", "1").tags["dvc_exp_name"] == best
    report = json.loads((repo.root / "projects/synth/results" / params["train_val"]["model_name"] / "test_metrics.json").read_text())
    assert report["ndcg_at_10"] == pytest.approx(points[other][1]["test"].data.metrics["ndcg_at_10"])


def test_bad_sweep_file_and_failed_point(repo, events):
    repo.run("bert4rec", "project", "synth", str(events), *flags(TINY))
    head = repo.git("rev-parse", "HEAD")
    write_sweep(repo, "bad", {"grid": {"train_val.learning_rat": [0.1]}})
    result = repo.run("make", "-s", "sweep", "SWEEP=bad", check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == ("error: config/sweeps/bad.yaml: grid: unknown key 'train_val.learning_rat' "
                                             "(not a parameter in src/bert4rec/params.py); did you mean "
                                             "'train_val.learning_rate'?")
    assert repo.git("rev-parse", "HEAD") == head and "No experiment tasks" in repo.run("dvc", "queue", "status").stdout

    # a valid value that the data refuses (a text file read as Parquet): the point fails in its raw stage
    write_sweep(repo, "short", {"grid": {"raw.format": ["sequence_table"]}, "max_points": 1})
    result = repo.run("make", "-s", "sweep", "SWEEP=short", env=ON, check=False, timeout=900)
    assert result.returncode == 2
    assert "not a readable Parquet file" in result.stdout  # the point's output, followed live
    assert "error: 1 of 1 points failed (short-1-p1): `dvc queue logs <name>` shows why" in result.stderr
    _, runs = mlflow_runs(repo)
    point = next(r for r in runs if r.data.tags.get("kind") == "sweep_point")
    sweep = next(r for r in runs if r.data.tags.get("kind") == "sweep")
    assert point.info.status == "FAILED" and sweep.info.status == "FAILED"
    assert repo.run("dvc", "exp", "list", "--name-only").stdout.split() == []
    promote = repo.run("make", "-s", "promote", env=ON, check=False)
    assert promote.returncode == 2
    assert "error: sweep short-1: no point finished with validation metrics; nothing to promote" in promote.stderr
