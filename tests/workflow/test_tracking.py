from bert4rec.workflow import tracking
from bert4rec.paths import ProjectPaths


def test_store_sits_at_the_repository_holding_the_project(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = tmp_path / "repo" / "projects" / "demo"
    project.mkdir(parents=True)
    (tmp_path / "repo" / "dvc.yaml").write_text("stages: {}\n")
    assert tracking.repository_root(ProjectPaths(project)) == (tmp_path / "repo").resolve()
    assert tracking.tracking_uri(ProjectPaths(project)).endswith("/repo/mlflow.db")


def test_project_outside_a_repository_keeps_its_store_inside_itself(tmp_path):
    project = tmp_path / "loose" / "project"
    project.mkdir(parents=True)
    assert tracking.repository_root(ProjectPaths(project)) == project.resolve()


def test_tracking_off_starts_nothing_in_the_background(tmp_path):
    tracking.warm_up(ProjectPaths(tmp_path))  # BERT4REC_TRACKING=off in every test (conftest)
    assert tracking._warm_up is None


def test_lineage_params_are_replayed_after_an_outage(tmp_path):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("lineage", artifact_location=(tmp_path / "a").as_uri()))
    entries = [{"kind": "params", "params": {"parent_run_id": "abc", "parent_model": "models:/base/3"}},
               {"kind": "tags", "tags": {"parent_model": "models:/base/3"}}, {"kind": "end", "status": "FINISHED"}]
    tracking._replay(client, run.info.run_id, entries)
    replayed = client.get_run(run.info.run_id)
    assert replayed.data.params == {"parent_run_id": "abc", "parent_model": "models:/base/3"}
    assert replayed.data.tags["parent_model"] == "models:/base/3" and replayed.info.status == "FINISHED"


def test_sync_with_nothing_kept_opens_no_store(tmp_path, monkeypatch):
    monkeypatch.setenv("BERT4REC_TRACKING", "on")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / tracking.PENDING).mkdir()  # left empty by an earlier sync
    assert tracking.sync(tmp_path) == 0
    assert [p.name for p in tmp_path.iterdir()] == [str(tracking.PENDING)]
