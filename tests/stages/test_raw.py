import gzip
import re
import json

import pyarrow.parquet as pq
import pytest
import yaml

from bert4rec import cli
from bert4rec.tools import synthetic
from helpers import make_project, shared_file, single_error, write_file


def run_raw(project):
    return cli.main(["raw", "--project", str(project)])


def sequences(project):
    return pq.read_table(project / "data" / "interim" / "sequences.parquet").to_pylist()


def summary(project):
    return json.loads((project / "data" / "interim" / "raw_summary.json").read_text())


def leftovers(project):
    interim = project / "data" / "interim"
    return sorted(p.name for p in interim.iterdir()) if interim.exists() else []


@pytest.mark.parametrize("fmt, name", [
    ("sequence_lines", "s.txt.gz"), ("csv", "e.csv"), ("tsv", "e.tsv.gz"), ("dat", "r.dat"),
    ("parquet", "e.parquet"), ("sequence_table", "t.parquet"),
])
def test_every_format_gives_the_same_histories(tmp_path, fmt, name):
    events = synthetic.generate(users=40, items=30, mean_length=10, seed=5)
    path = synthetic.write(events, tmp_path / name, fmt)
    project = make_project(tmp_path / fmt, path)
    assert run_raw(project) == 0
    got = {row["user_id"]: row["items"] for row in sequences(project)}
    expected = {}
    for user, item in zip(events["user"].to_pylist(), events["item"].to_pylist()):
        expected.setdefault(user, []).append(item)
    assert got == expected
    assert summary(project)["interactions"] == events.num_rows


def test_events_sorted_by_time_ties_in_input_order(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\nb,x,5\na,y,3\nb,z,1\na,w,3\nb,v,5\na,u,1\n")
    project = make_project(tmp_path / "p", path)
    assert run_raw(project) == 0
    rows = sequences(project)
    assert [(r["user_index"], r["user_id"], r["items"]) for r in rows] == [
        (0, "b", ["z", "x", "v"]),  # users in order of first appearance
        (1, "a", ["u", "y", "w"]),  # the tie at 3 keeps input order y, w
    ]
    users = pq.read_table(project / "references" / "users.parquet").to_pylist()
    assert users == [{"user_index": 0, "user_id": "b"}, {"user_index": 1, "user_id": "a"}]


def test_integer_ids_stay_integers_and_leading_zeros_stay_strings(tmp_path):
    path = tmp_path / "log.tsv"
    path.write_text("user\titem\n7\t007\n7\t8\n7\t9\n")
    project = make_project(tmp_path / "p", path)
    assert run_raw(project) == 0
    row = sequences(project)[0]
    assert row["user_id"] == 7 and row["items"] == ["007", "8", "9"]


def test_drop_consecutive_repeats_keeps_single_item_histories(tmp_path):
    path = tmp_path / "seq.txt"
    path.write_text("1 5\n1 5\n1 6\n1 6\n1 5\n2 9\n3 4\n3 4\n")
    project = make_project(tmp_path / "p", path, raw={"drop_consecutive_repeats": True, "task": "inference"})
    assert run_raw(project) == 0
    assert [r["items"] for r in sequences(project)] == [[5, 6, 5], [9], [4]]
    assert summary(project)["dropped"]["consecutive_repeats"]["events"] == 3


def test_min_length_per_task(tmp_path):
    path = tmp_path / "seq.txt"
    path.write_text("1 1\n2 1\n2 2\n3 1\n3 2\n3 3\n")
    for task, users in [("train_val_test", [3]), ("train_val", [2, 3]), ("test", [2, 3]), ("inference", [1, 2, 3])]:
        project = make_project(tmp_path / task, path, raw={"task": task})
        assert run_raw(project) == 0
        assert [r["user_id"] for r in sequences(project)] == users
        assert [r["user_index"] for r in sequences(project)] == list(range(len(users)))  # dense after dropping
    dropped = summary(tmp_path / "train_val_test")["dropped"]["short_histories"]
    assert dropped == {"users": 2, "events": 3, "min_length": 3}


def test_chunked_processing_gives_identical_bytes(tmp_path, synthetic_file):
    outputs = []
    for chunk in (7, 65536):
        project = make_project(tmp_path / f"c{chunk}", synthetic_file, raw={"users_per_chunk": chunk})
        assert run_raw(project) == 0
        outputs.append([r for r in sequences(project)])
    assert outputs[0] == outputs[1]


def test_same_input_same_bytes(tmp_path, synthetic_file):
    digests = []
    for name in ("a", "b"):
        project = make_project(tmp_path / name, synthetic_file)
        assert run_raw(project) == 0
        interim = project / "data" / "interim"
        digests.append([(interim / f).read_bytes() for f in ("sequences.parquet", "raw_summary.json")])
    assert digests[0] == digests[1]


def test_pickle_needs_opt_in(tmp_path, capsys):
    path = synthetic.write(synthetic.generate(users=10, items=5, seed=1), tmp_path / "old.pkl", "pickle")
    project = make_project(tmp_path / "p", path)
    assert run_raw(project) == 2
    assert "raw.allow_pickle" in capsys.readouterr().err
    assert not (project / "data" / "interim" / "sequences.parquet").exists()
    make_project(project, path, raw={"allow_pickle": True})
    assert run_raw(project) == 0
    assert summary(project)["users"] == 10


write = write_file


def truncated_gzip(tmp_path):
    data = gzip.compress("".join(f"{u} {i}\n" for u in range(200) for i in range(50)).encode())
    return write(tmp_path, "cut.txt.gz", data[: len(data) // 2])


@pytest.mark.parametrize("make_input, params, message", [
    (lambda t: t / "nope.txt", {}, r"nope\.txt: input file not found \(raw\.input\)"),
    (lambda t: write(t, "data.xlsx", "x"), {}, r"data\.xlsx: unknown input format '\.xlsx'"),
    (lambda t: write(t, "empty.txt", ""), {}, r"empty\.txt: the file is empty"),
    (lambda t: write(t, "head.csv", "user_id,item_id,timestamp\n"), {}, r"head\.csv: the file has a header but no rows"),
    (lambda t: write(t, "cols.csv", "user_id,thing,ts\n1,2,3\n"), {}, r"cols\.csv: no item column found"),
    (lambda t: write(t, "cols.csv", "who,item_id\n1,2\n"), {}, r"cols\.csv: no user column found"),
    (lambda t: write(t, "cols.csv", "user_id,item_id\n1,2\n"), {"columns": {"item": "sku"}}, r"no column 'sku' \(raw\.columns\.item\)"),
    (lambda t: write(t, "nan.csv", "user_id,item_id\n1,2\n2,NaN\n"), {}, r"nan\.csv: line 3: '2,NaN' has an empty or NaN item id in column 'item_id'"),
    (lambda t: write(t, "blank.csv", "user_id,item_id\n1,2\n,3\n"), {}, r"blank\.csv: line 3: ',3' has an empty or NaN user id in column 'user_id'"),
    (lambda t: write(t, "bad.txt", "1 2\n1 3\n1 4 5\n2 2\n"), {}, r"bad\.txt: line 3: '1 4 5' has 3 fields; expected 2 separated by ' '"),
    (truncated_gzip, {}, r"cut\.txt\.gz: cannot read the file, it may be truncated or corrupt"),
    (lambda t: write(t, "short.txt", "1 1\n1 2\n2 1\n"), {}, r"short\.txt: no users left after min length 3"),
])
def test_bad_input_is_one_clear_error_and_no_output(tmp_path, capsys, make_input, params, message):
    path = make_input(tmp_path)
    project = tmp_path / "p"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump({"raw": {"input": str(path), **params}}))
    assert run_raw(project) == 2
    assert re.search(message, single_error(capsys.readouterr().err))
    assert leftovers(project) == []  # nothing partial, no temp files


def test_unwritable_output_folder(tmp_path, capsys, synthetic_file):
    project = make_project(tmp_path / "p", synthetic_file)
    (project / "data" / "interim").write_text("a file where the output folder should be")
    assert run_raw(project) == 2
    assert "interim" in capsys.readouterr().err


def test_string_ids_are_valid(tmp_path):
    path = write(tmp_path, "s.csv", "visitor,article\nu-1,a\nu-1,b\nu-1,c\nu-2,b\nu-2,c\nu-2,a\n")
    project = make_project(tmp_path / "p", path)
    assert run_raw(project) == 0
    assert [r["items"] for r in sequences(project)] == [["a", "b", "c"], ["b", "c", "a"]]


def test_ml1m_summary(tmp_path):
    project = make_project(tmp_path / "ml1m", shared_file("ml-1m/ml-1m.txt.gz"))
    assert run_raw(project) == 0
    got = summary(project)
    assert (got["users"], got["items"], got["interactions"]) == (6040, 3416, 999611)
    assert got["history_length"]["min"] == 18 and got["history_length"]["max"] == 2277


def test_ml100k_summary(tmp_path):
    project = make_project(tmp_path / "ml100k", shared_file("ml-100k/u.data.gz"))
    assert run_raw(project) == 0
    got = summary(project)
    assert (got["users"], got["items"], got["interactions"]) == (943, 1682, 100000)
    assert "timestamp='column_3'" in got["format"]


def test_datetime_strings_and_columns_by_position(tmp_path):
    path = write(tmp_path, "log.tsv", "x\t2021-03-01 10:00:00\tA\t1\nx\t2021-02-01 09:00:00\tB\t1\nx\t2021-01-01\tC\t1\n")
    project = make_project(tmp_path / "p", path, raw={"columns": {"user": 0, "item": 2, "timestamp": 1}})
    assert run_raw(project) == 0
    assert sequences(project)[0]["items"] == ["C", "B", "A"]


def test_bad_timestamp_column_is_named(tmp_path, capsys):
    path = write(tmp_path, "log.csv", "user_id,item_id,timestamp\n1,2,yesterday\n1,3,today\n")
    project = make_project(tmp_path / "p", path)
    assert run_raw(project) == 2
    assert "line 2: '1,2,yesterday' has 'yesterday' in column 'timestamp'; expected a number or an ISO date" in capsys.readouterr().err


def test_an_input_that_changes_while_it_is_read_writes_nothing(tmp_path, monkeypatch, capsys):
    from bert4rec.stages import raw

    data = write_file(tmp_path, "events.csv", "user_id,item_id\n" + "".join(f"{u},{i}\n" for u in range(5) for i in range(4)))
    project = make_project(tmp_path / "p", data)
    read_events = raw.readers.read_events

    def read_while_appended(source, params):
        description, tables = read_events(source, params)

        def appended():
            for number, table in enumerate(tables):
                yield table
                if number == 0:
                    with open(source, "a") as handle:  # another program still writing the file
                        handle.write("9,9\n" * 1000)
        return description, appended()

    monkeypatch.setattr(raw.readers, "read_events", read_while_appended)
    assert run_raw(project) == 2
    assert "events.csv: the file changed while it was read" in single_error(capsys.readouterr().err)
    assert leftovers(project) == [] and not (project / "data" / "interim" / "sequences.parquet").exists()
