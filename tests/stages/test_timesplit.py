"""Time-based splits (raw.split: time) on a hand-made log: boundaries, targets, vocabulary, errors."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from bert4rec.data.manifest import Manifest
from bert4rec.data.records import MASK, PAD
from bert4rec.model import inputs
from helpers import make_project, run_stage

from .test_tfrecord import read_split, vocabulary

DAY, BASE = 86400, 883612800  # 1998-01-01 00:00 UTC
# (user, item, day): the dates below cut days 1..9 (train), 10..19 (valid), 20..29 (test)
LOG = [("a", "x", 1), ("a", "y", 2), ("b", "y", 5), ("a", "z", 3), ("b", "w", 6), ("e", "x", 0),
       ("a", "w", 11), ("a", "x", 12), ("c", "x", 13), ("c", "w", 14), ("b", "n", 15),
       ("a", "y", 21), ("d", "w", 22), ("d", "x", 23), ("e", "y", 24), ("b", "z", 25), ("a", "z", 31)]
DATES = {"split": "time", "data_start": "1998-01-02", "validation_start": "1998-01-11",
         "test_start": "1998-01-21", "test_end": "1998-01-31"}


def write_log(path, rows=LOG):
    path.write_text("user_id,item_id,timestamp\n" + "".join(f"{u},{i},{BASE + d * DAY}\n" for u, i, d in rows))
    return path


@pytest.fixture
def split_project(tmp_path):
    project = make_project(tmp_path / "p", write_log(tmp_path / "log.csv"), raw=DATES,
                           tfrecord={"max_seq_length": 5, "max_predictions_per_seq": 2, "num_shards": 2,
                                     "pool_size": 1})
    assert run_stage("raw", project) == 0
    return project


def day_of(times):
    return [(t - BASE) // DAY for t in times]


def test_raw_keeps_times_and_counts_each_window(split_project):
    rows = pq.read_table(split_project / "data/interim/sequences.parquet").to_pylist()
    got = {r["user_id"]: (r["items"], day_of(r["times"])) for r in rows}
    assert got == {"a": (["x", "y", "z", "w", "x", "y"], [1, 2, 3, 11, 12, 21]),  # day 31: after test_end
                   "b": (["y", "w", "n", "z"], [5, 6, 15, 25]), "c": (["x", "w"], [13, 14]),
                   "d": (["w", "x"], [22, 23]), "e": (["y"], [24])}  # day 0: before data_start
    summary = json.loads((split_project / "data/interim/raw_summary.json").read_text())
    assert summary["split"] == "time" and summary["dropped"]["outside_dates"] == {"events": 2}
    windows = summary["windows"]
    assert windows["train"] == {"from": "1998-01-02T00:00:00", "to": "1998-01-11T00:00:00", "events": 5, "users": 2}
    assert {k: windows["valid"][k] for k in ("events", "users", "targets", "users_evaluated", "new_items",
                                             "new_item_events")} == {
        "events": 5, "users": 3, "targets": 4, "users_evaluated": 3, "new_items": 1, "new_item_events": 1}
    assert {k: windows["test"][k] for k in ("events", "users", "targets", "users_evaluated", "new_items")} == {
        "events": 5, "users": 4, "targets": 3, "users_evaluated": 3, "new_items": 0}


def test_no_target_or_input_crosses_a_boundary(split_project):
    assert run_stage("tfrecord", split_project) == 0
    vocab = vocabulary(split_project)
    assert set(vocab) == {"x", "y", "z", "w"}  # "n" is first seen after validation_start: unknown
    token = {item: vocab.get(item, PAD) for item in "xyzwn"}
    users = {r["user_index"]: r["user_id"] for r in
             pq.read_table(split_project / "references/users.parquet").to_pylist()}

    def seen(split):
        return sorted((users[int(r["user_index"][0])], int(r["target"][0]), r["history"].tolist())
                      for r in read_split(split_project, split))

    t = token
    assert seen("valid") == sorted([("a", t["w"], [t["x"], t["y"], t["z"]]), ("a", t["x"], [t["x"], t["y"], t["z"], t["w"]]),
                                    ("b", PAD, [t["y"], t["w"]]), ("c", t["w"], [t["x"]])])
    assert seen("test") == sorted([("a", t["y"], [t["x"], t["y"], t["z"], t["w"], t["x"]]),
                                   ("b", t["z"], [t["y"], t["w"]]), ("d", t["x"], [t["w"]])])
    trained = sorted(r["input_ids"][r["input_ids"] != PAD].tolist() for r in read_split(split_project, "train"))
    assert trained == sorted([[t["x"], t["y"], t["z"]], [t["y"], t["w"]]])  # nothing from day 11 on
    inference = {users[int(r["user_index"][0])]: r["history"].tolist() for r in read_split(split_project, "inference")}
    assert inference["b"] == [t["y"], t["w"], t["z"]] and inference["e"] == [t["y"]]
    record = next(r for r in read_split(split_project, "test") if r["target"][0] == t["y"])
    np.testing.assert_array_equal(record["input_ids"], [t["y"], t["z"], t["w"], t["x"], MASK])  # last 4 + [MASK]
    manifest = Manifest.read(split_project / "data/processed/records")
    assert manifest.split_method == "time" and manifest.split_dates["validation_start"] == "1998-01-11T00:00:00"
    assert manifest.unknown_items.targets == 1 and manifest.splits["valid"].examples == 4
    assert manifest.unknown_items.input_items == 1  # b's "n": a valid target, then in its test history


def test_evaluation_readers_keep_every_target_of_a_user_in_order(split_project):
    assert run_stage("tfrecord", split_project) == 0
    manifest = Manifest.read(split_project / "data/processed/records")
    for chunk_size in (1, 2, 100):
        chunks = list(inputs.eval_chunks(manifest, "valid", chunk_size=chunk_size))
        users = np.concatenate([c.user_index for c in chunks])
        lengths = np.concatenate([np.diff(c.offsets) for c in chunks])
        assert users.tolist() == sorted(users.tolist()) and len(users) == 4
        assert lengths[users == 0].tolist() == [3, 4]  # user a's two targets, in time order
    assert manifest.splits["valid"].users == 3 and manifest.splits["test"].users == 3
    sample = inputs.sample_rows(manifest, "valid", 2, seed=1)  # a sample of users keeps all their targets
    counts = dict(zip(*np.unique(sample.user_index, return_counts=True)))
    assert len(counts) == 2 and all(n == (2 if user == 0 else 1) for user, n in counts.items())


def test_baselines_count_each_users_history_before_the_window_once(split_project):
    """User a has two validation targets: its second record's history holds the first target (w),
    which must not feed the baselines that then predict it."""
    from bert4rec.model import recommend, transitions

    assert run_stage("tfrecord", split_project) == 0
    manifest, token = Manifest.read(split_project / "data/processed/records"), vocabulary(split_project)
    popularity = recommend.history_popularity(manifest, "valid")
    counted = transitions.count_transitions(manifest, "valid", popularity)
    source = np.repeat(np.arange(len(counted.indptr) - 1), np.diff(counted.indptr))
    got = {(int(s), int(t)): int(n) for s, t, n in zip(source, counted.tokens, counted.counts)}
    # first histories: a x y z (before day 11), b y w, c x (its window's first event)
    assert got == {(token["x"], token["y"]): 1, (token["y"], token["z"]): 1, (token["y"], token["w"]): 1}


def test_a_time_split_keeps_histories_of_any_length(tmp_path):
    project = make_project(tmp_path / "p", write_log(tmp_path / "log.csv"), raw={**DATES, "min_history_length": 1},
                           tfrecord={"max_seq_length": 5, "max_predictions_per_seq": 2, "num_shards": 2,
                                     "pool_size": 1})
    assert run_stage("raw", project) == 0


@pytest.mark.parametrize("rows, raw, message", [
    ([("a", "x", 1), ("a", "y", 12), ("b", "x", 2), ("b", "y", 22)], {"test_start": "1998-01-11"},
     "raw.test_start: must be after raw.validation_start"),
    ([("a", "x", 1), ("a", "y", 22), ("b", "x", 2), ("b", "y", 23)], {},
     "raw.split time: no validation targets from raw.validation_start (1998-01-11T00:00:00) to 1998-01-21"),
    ([("a", "x", 12), ("a", "y", 14), ("a", "y", 22)], {},
     "raw.split time: no training events from raw.data_start (1998-01-02T00:00:00) before raw.validation_start"),
])
def test_bad_dates_and_empty_windows_are_one_line_errors(tmp_path, capsys, rows, raw, message):
    project = make_project(tmp_path / "p", write_log(tmp_path / "log.csv", rows), raw={**DATES, **raw})
    assert run_stage("raw", project) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], errors
    assert not (project / "data/interim/sequences.parquet").exists()


def test_time_split_needs_timestamps_and_dates(tmp_path, capsys):
    path = tmp_path / "seq.txt"
    path.write_text("1 5\n1 6\n2 5\n")
    project = make_project(tmp_path / "p", path, raw=DATES)
    assert run_stage("raw", project) == 2
    assert "raw.split is time but the input has no timestamps" in capsys.readouterr().err
    project = make_project(tmp_path / "q", path, raw={"split": "time", "test_start": "1998-01-21"})
    assert run_stage("raw", project) == 2
    assert "raw.validation_start: required with raw.split: time" in capsys.readouterr().err
    project = make_project(tmp_path / "r", path, raw={"test_start": "1998-01-21"})
    assert run_stage("raw", project) == 2
    assert "raw.test_start: only used with raw.split: time" in capsys.readouterr().err


def test_date_strings_split_like_unix_seconds_and_bytes_are_stable(tmp_path, split_project):
    dated = tmp_path / "dated.csv"
    dated.write_text("user_id,item_id,timestamp\n" + "".join(
        f"{u},{i},{np.datetime_as_string(np.datetime64(BASE + d * DAY, 's'))}\n" for u, i, d in LOG))
    project = make_project(tmp_path / "dated", dated, raw={**DATES, "users_per_chunk": 2})
    assert run_stage("raw", project) == 0
    table = pq.read_table(project / "data/interim/sequences.parquet")
    assert table.schema.field("times").metadata == {b"unit": b"ns"}
    expected = pq.read_table(split_project / "data/interim/sequences.parquet")
    assert table.column("items").to_pylist() == expected.column("items").to_pylist()
    summary = json.loads((project / "data/interim/raw_summary.json").read_text())
    assert summary["windows"] == json.loads((split_project / "data/interim/raw_summary.json").read_text())["windows"]
    for name, chunk in (("again", 65536), ("chunked", 2)):  # same bytes again; same rows in smaller chunks
        again = make_project(tmp_path / name, write_log(tmp_path / f"{name}.csv"), raw={**DATES, "users_per_chunk": chunk})
        assert run_stage("raw", again) == 0
        files = [p / "data/interim/sequences.parquet" for p in (again, split_project)]
        if chunk == 65536:
            assert files[0].read_bytes() == files[1].read_bytes()
        assert pq.read_table(files[0]).to_pylist() == pq.read_table(files[1]).to_pylist()
