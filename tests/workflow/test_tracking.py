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
