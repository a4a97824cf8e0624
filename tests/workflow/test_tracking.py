import json
import logging
import shutil

import pytest

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
    folder = tmp_path / run.info.run_id
    folder.mkdir()
    tracking._replay(client, folder, entries)
    replayed = client.get_run(run.info.run_id)
    assert replayed.data.params == {"parent_run_id": "abc", "parent_model": "models:/base/3"}
    assert replayed.data.tags["parent_model"] == "models:/base/3" and replayed.info.status == "FINISHED"


def test_sync_with_nothing_kept_opens_no_store(tmp_path, monkeypatch):
    monkeypatch.setenv("BERT4REC_TRACKING", "on")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / tracking.PENDING).mkdir()  # left empty by an earlier sync
    assert tracking.sync(tmp_path) == 0
    assert [p.name for p in tmp_path.iterdir()] == [str(tracking.PENDING)]


def kept_run(root, client, lines: list[str]) -> str:
    run = client.create_run(client.get_experiment_by_name("kept").experiment_id)
    folder = root / tracking.PENDING / run.info.run_id
    folder.mkdir(parents=True)
    (folder / "journal.jsonl").write_text("".join(line + "\n" for line in lines))
    return run.info.run_id


@pytest.fixture
def store(tmp_path):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_experiment("kept", artifact_location=(tmp_path / "a").as_uri())
    return client


def test_damaged_journals_are_set_aside_with_a_warning_and_the_rest_is_sent(tmp_path, store, caplog):
    metrics = json.dumps({"kind": "metrics", "metrics": {"loss": 1.0}, "timestamp": 0, "step": 1})
    good = kept_run(tmp_path, store, [metrics, json.dumps({"kind": "end", "status": "FINISHED"}), '{"kind": "met'])
    not_json = kept_run(tmp_path, store, ["not json", metrics])
    unknown = kept_run(tmp_path, store, [json.dumps({"no": "kind"})])
    bad_status = kept_run(tmp_path, store, [metrics, json.dumps({"kind": "end", "status": "BOGUS"})])
    (tmp_path / tracking.PENDING / "stray-file").write_text("x")
    (tmp_path / tracking.PENDING / "gone-run").mkdir()
    with caplog.at_level(logging.WARNING, logger="bert4rec.tracking"):
        assert tracking.replay_pending(tmp_path, store) == 1
    assert store.get_run(good).info.status == "FINISHED"  # its cut-short last line left out
    assert [m.value for m in store.get_metric_history(good, "loss")] == [1.0]
    assert not (tmp_path / tracking.PENDING).exists() or not any((tmp_path / tracking.PENDING).iterdir())
    unsent = sorted(p.name for p in (tmp_path / tracking.UNSENT).iterdir())
    assert unsent == sorted([not_json, unknown, bad_status, "stray-file", "gone-run"])
    assert f"{not_json}/journal.jsonl: line 1 is not JSON" in caplog.text
    assert "journal.jsonl: line 1 is not a journal entry" in caplog.text


def test_a_replay_cut_off_goes_on_where_it_stopped(tmp_path, store):
    lines = [json.dumps({"kind": "metrics", "metrics": {"loss": float(step)}, "timestamp": 0, "step": step})
             for step in (1, 2, 3)]
    run_id = kept_run(tmp_path, store, lines)
    (tmp_path / tracking.PENDING / run_id / "sent").write_text("2")  # the first two went out before an outage
    assert tracking.replay_pending(tmp_path, store) == 1
    assert [m.step for m in store.get_metric_history(run_id, "loss")] == [3]


def test_kept_artifacts_and_models_are_sent_under_their_own_names_after_the_originals_are_gone(tmp_path, store,
                                                                                              monkeypatch):
    """A sweep point's folder is removed by DVC before the server is back: what the run kept is
    copied into its journal, and replayed under the names the run gave."""
    run_id = kept_run(tmp_path, store, [])
    folder = tmp_path / tracking.PENDING / run_id
    (folder / "files").mkdir()
    monkeypatch.setattr(tracking, "_journal", folder)
    work = tmp_path / "exp"
    (work / "model" / "checkpoints").mkdir(parents=True)
    (work / "model" / "model.json").write_text("{}")
    (work / "model" / "checkpoints" / "ckpt-1.index").write_text("x")
    (work / "valid_metrics.json").write_text("{}")
    (work / "curves").mkdir()
    (work / "curves" / "a.csv").write_text("step\n1\n")
    tracking._send({"kind": "artifact", "file": str(work / "valid_metrics.json"), "artifact_path": None}, None)
    tracking._send({"kind": "artifact", "file": str(work / "curves"), "artifact_path": "curves"}, None)
    tracking._send({"kind": "model", "folder": str(work / "model"), "name": "model"}, None)
    tracking._append_journal(folder, {"kind": "end", "status": "FINISHED"})
    monkeypatch.setattr(tracking, "_journal", None)
    shutil.rmtree(work)
    import mlflow
    from mlflow.tracking._tracking_service import utils as mlflow_uri

    monkeypatch.setattr(mlflow_uri, "_tracking_uri", mlflow_uri._tracking_uri)  # both put back after the test
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri("sqlite:///" + str(tmp_path / "another.db"))  # an earlier test's store: not used
    assert tracking.replay_pending(tmp_path, store) == 1
    run = store.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["model_uri"].startswith("models:/")
    assert sorted(a.path for a in store.list_artifacts(run_id)) == ["curves", "valid_metrics.json"]
    assert [a.path for a in store.list_artifacts(run_id, "curves")] == ["curves/a.csv"]
    assert not (tmp_path / tracking.PENDING).exists()  # nothing left: no empty folder either
    assert mlflow.get_tracking_uri().endswith("another.db")  # left as it was


@pytest.mark.parametrize("uri, message", [
    ("file:///tmp/mlruns", r"expected a tracking server \(http://host:port\) or a database"),
    ("127.0.0.1:5000", r"expected a tracking server \(http://host:port\) or a database"),
    ("sqlite:////nowhere/at/all/mlflow.db", r"the folder /nowhere/at/all does not exist"),
])
def test_a_tracking_uri_of_the_wrong_kind_is_one_line(uri, message, tmp_path):
    with pytest.raises(tracking.UserError, match=message):
        tracking.check_store(uri)
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("status, message", [
    (404, r"does not answer as an MLflow tracking server \(HTTP 404 on /health\)"),
    (401, r"refused the credentials \(HTTP 401 on /health\); set MLFLOW_TRACKING_USERNAME"),
])
def test_an_http_server_that_is_not_mlflow_is_refused_up_front(status, message):
    import http.server
    import threading

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(status)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(tracking.UserError, match=message):
            tracking.check_store(f"http://127.0.0.1:{server.server_port}/extra/path")
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("text, message", [
    ("A=1\n\n# note\nMLFLOW_TRACKING_URI http://127.0.0.1:5000\n",
     r"\.env: line 4 \(starting 'MLFLOW_TRACKING_URI'\) is not KEY=value"),
    ("A=1\n\nAWS_SECRET_ACCESS_KEY=\"s3cr3t\n", r"\.env: line 3 \(starting 'AWS_SECRET_ACCESS_KEY'\) is not KEY=value"),
    ("A=1\n  \n\t\nBAD x\n", r"\.env: line 4 \(starting 'BAD'\) is not KEY=value"),
    ("A=1\ns3cr3tghp0123456789 x\n", r"\.env: line 2 is not KEY=value"),  # a pasted value: not shown
])
def test_a_line_of_dotenv_that_is_not_a_setting_is_one_line_without_its_value(tmp_path, text, message, monkeypatch):
    monkeypatch.delenv("A", raising=False)
    (tmp_path / ".env").write_text(text)
    with pytest.raises(tracking.UserError, match=message) as error:
        tracking.load_env(tmp_path)
    assert "s3cr3t" not in str(error.value) and "5000\n" not in str(error.value)


def test_dotenv_as_a_folder_is_one_line(tmp_path):
    (tmp_path / ".env").mkdir()
    with pytest.raises(tracking.UserError, match=r"\.env: is a folder; expected a file of KEY=value lines"):
        tracking.load_env(tmp_path)
