"""Files people really have, given to the raw and tfrecord stages: each one is read correctly or
stops with one line naming the file (and line/row/column/key) and what was expected, exit code
2, nothing written. (Issue 11, "Hostile and unusual files".)"""

import re
import resource
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from bert4rec.tools import synthetic
from helpers import make_project, run_stage, set_params, single_error, write_file, written_files


def parquet(table: pa.Table):
    def make(folder):
        pq.write_table(table, folder / "events.parquet")
        return folder / "events.parquet"
    return make


def text(name: str, content: bytes | str):
    return lambda folder: write_file(folder, name, content)


def truncated_pickle(folder):
    path = folder / "old.pkl"
    pd.DataFrame({"user_id": [1] * 10, "item_id": range(10)}).to_pickle(path)
    path.write_bytes(path.read_bytes()[:60])
    return path


CSV = "user_id,item_id\n1,2\n1,3\n1,4\n"


def fails(tmp_path, capsys, make_input, stage="raw", **params) -> str:
    """Run raw (and then `stage`) on the input; the failing stage's one error line."""
    project = make_project(tmp_path / "p", make_input(tmp_path), **params)
    if stage != "raw":
        assert run_stage("raw", project) == 0
        capsys.readouterr()
    before = written_files(project)
    assert run_stage(stage, project) == 2
    assert written_files(project) == before  # nothing partial, no temporaries
    return single_error(capsys.readouterr().err)


@pytest.mark.parametrize("make_input, params, message", [
    (parquet(pa.table({"user_id": [1, 1, 1], "item_id": [1.0, 2.5, 3.0]})), {},
     r"events\.parquet: column 'item_id' holds 2\.5 \(row 2\); ids must be whole numbers or text"),
    (parquet(pa.table({"user_id": [1, 1, 1], "item_id": [1.0, float("nan"), 3.0]})), {},
     r"events\.parquet: column 'item_id' has missing \(NaN\) ids \(row 2\)"),
    (parquet(pa.table({"user_id": [1, None, 1], "item_id": [1, 2, 3]})), {},
     r"events\.parquet: column 'user_id' has missing \(null\) ids \(row 2\)"),
    (parquet(pa.table({"user_id": [1, 2], "items": [[[1, 2], [3]], [[4], [5, 6]]]})), {},
     r"events\.parquet: column 'items' holds lists of lists \(list<.*>\); expected one flat list of item ids per user"),
    (parquet(pa.table({"user_id": [1, 2], "items": ["1 2 3", "4 5 6"]})), {"raw": {"format": "sequence_table"}},
     r"events\.parquet: column 'items' holds string values; expected a list of item ids per user"),
    (parquet(pa.table({"user_id": pa.array([b"u1", b"u\xff", b"u1"]), "item_id": [1, 2, 3]})), {},
     r"events\.parquet: column 'user_id' holds bytes that are not UTF-8 text \(row 2\): b'u\\xff'"),
    (parquet(pa.table({"user_id": [1, 1], "item_id": [{"a": 1}, {"a": 2}]})), {},
     r"events\.parquet: column 'item_id' holds struct<a: int64> values; expected one integer or text id per row"),
    (parquet(pa.table({"user_id": [1, 1], "item_id": [1, 2]})), {"raw": {"columns": {"user": "user_id", "item": "user_id"}}},
     r"events\.parquet: column 'user_id' is both the user and the item column \(raw\.columns\)"),
    (text("events.parquet", b"PAR1 not really"), {}, r"events\.parquet: not a readable Parquet file"),
    (truncated_pickle, {"raw": {"allow_pickle": True}},
     r"old\.pkl: not a readable pickle, it may be truncated or corrupt \(UnpicklingError"),
    (text("e.csv", CSV), {"raw": {"separator": ""}},
     r"params\.yaml: raw\.separator: must be one ASCII character \(not a quote or line break\) or '::' \(MovieLens \.dat\) \(got ''\)"),
    (text("e.csv", CSV), {"raw": {"separator": "¦"}}, r"params\.yaml: raw\.separator: must be one ASCII character .* \(got '¦'\)"),
    (text("e.csv", CSV), {"raw": {"columns": {"user": True}}},
     r"params\.yaml: raw\.columns\.user: expected a column name or a 0-based column position \(got True\)"),
    (text("e.csv", 'user_id,item_id\n1,2\n1,"abc\n1,d\n2,e\n'), {"raw": {"task": "inference"}},
     r"e\.csv: line 3: '1,\"abc' has a line break inside its quoted item id \(a quote \(\"\) not closed on its line\?\)"),
    (text("e.csv", 'user_id,item_id,review\n1,2,"fine,\nreally"\n1,3,ok\n1,,bad\n'), {},
     r"e\.csv: line 5: '1,,bad' has an empty or NaN item id"),  # the row above spans lines 3-4
    (text("e.csv", 'user_id,item_id,review\n1,2,"' + "long " * 30000 + '"\n1,3,ok\n1,,bad\n'), {},
     r"e\.csv: line 4: '1,,bad' has an empty or NaN item id"),
    (text("e.csv", "\ufeffuser_id,item_id\r\n1,2\r\n1,3\r\n\ufeffuser_id,item_id\r\n2,5\r\n"), {},
     r"e\.csv: line 4: '\\ufeffuser_id,item_id' repeats the header \(files joined together\?\)"),
    (text("e.csv", "user_id,item_id\n1,N/A\n1,3\n"), {}, r"e\.csv: line 2: '1,N/A' has an empty or NaN item id"),
    (text("e.csv", "who,what\nu1,i1\nu1,i2\nu2,i3\n"), {},  # a header of unknown names over text ids: not data
     r"e\.csv: no user column found among \['who', 'what'\]; set raw\.columns\.user \(or raw\.header: false if that first row is data\)"),
    (text("e.csv", "user_id,item_id,date\n1,2,2020-01-01\n1,3,9999-12-31\n"), {},
     r"e\.csv: line 3: '1,3,9999-12-31' has '9999-12-31' in column 'date'; expected dates in 1678-2261"),
    (text("e.csv", 'user_id,item_id\n1,2\n"c1,1\n' + "1,2\n" * 300), {},
     r"e\.csv: line 3: '\"c1,1' opens a quote \(\"\) that no later line closes"),
    (text("e.csv", "user_id,item_id,timestamp\n1,2,5.5\n1,3,inf\n"), {},
     r"e\.csv: column 'timestamp' holds inf; expected finite timestamps"),
    (text("e.csv", "user_id,item_id,timestamp\n" + "".join(f"{u},{i},{(1600000000 + i * 86400) * 1000}\n"
                                                            for u in range(3) for i in range(12))),
     {"raw": {"split": "time", "validation_start": "2020-09-14", "test_start": "2020-09-20"}},
     r"no training events before raw\.validation_start .* the input's timestamps run from 1600000000000 to "
     r"1600950400000, not dates as unix seconds \(milliseconds\?\)"),
    (parquet(pa.Table.from_arrays([pa.array([1, 1]), pa.array([2, 3]), pa.array([4, 5])],
                                  names=["user_id", "item_id", "item_id"])), {},
     r"events\.parquet: duplicate column names \['item_id'\]; expected each column once"),
    (parquet(pa.table({"user_id": [1, 1], "item_id": [2, 3], "timestamp": pa.array([1, 2**63 + 5], pa.uint64())})), {},
     r"events\.parquet: column 'timestamp' holds 9223372036854775813 \(row 2\); expected timestamps below 2\^63"),
    (parquet(pa.table({"user_id": [1, 1], "item_id": [2, 3], "timestamp": ["2020-01-01", "yesterday"]})), {},
     r"events\.parquet: column 'timestamp' is not a timestamp \(numbers or dates expected\); 'yesterday' is neither"),
    (text("e.csv", CSV), {"raw": {"separator": ";;"}}, r"params\.yaml: raw\.separator: must be one ASCII character .* \(got ';;'\)"),
    (text("e.tsv", CSV), {"raw": {"separator": "\\t"}}, r"raw\.separator: .*for a tab write \"\\t\" in double quotes"),
    (text("e.csv", CSV), {"raw": {"columns": {"user": "user_id", "item": "user_id"}}},
     r"e\.csv: column 'user_id' is both the user and the item column \(raw\.columns\); expected different columns"),
    (text("e.txt", "1 2 978300760\n1 3 978300761\n"), {"raw": {"columns": {"timestamp": 0}}},
     r"e\.txt: column 'column_0' is both the user and the timestamp column"),
    (text("e.csv", "user_id,item_id\n1,2\n1,3\nuser_id,item_id\n1,4\n"), {},
     r"e\.csv: line 4: 'user_id,item_id' repeats the header \(files joined together\?\); expected data"),
    (text("e.csv", "user_id,item_id,timestamp\n1,2,5\n1,3,6\nuser_id,item_id,timestamp\n1,4,7\n"), {},
     r"e\.csv: line 4: 'user_id,item_id,timestamp' repeats the header"),
    (text("e.txt", "# user item\n1 2\n1 3\n# second file\n1 4\n"), {},
     r"e\.txt: line 4: '# second file' is a comment; comment lines \('#'\) are only allowed before the first row"),
    (text("e.txt", "1 2\n1 3\n# 1\n1 4\n"), {}, r"e\.txt: line 3: '# 1' is a comment"),
    (text("e.csv", b"user_id,item_id\n1,2\n1,\xe93\n1,4\n"), {},
     r"e\.csv: line 3, byte 3: b'1,\\xe93' is not UTF-8 text; save the file as UTF-8"),
    (text("e.csv", "user_id,item_id,ts\n1,2,978300760\n1,3,yesterday\n1,4,978300762\n"), {},
     r"e\.csv: line 3: '1,3,yesterday' has 'yesterday' in column 'ts'; expected a number or an ISO date"),
    (text("e.csv", "user_id,item_id,timestamp\n1,a,\n1,b,5\n1,c,6\n"), {},
     r"e\.csv: line 2: '1,a,' has no timestamp in column 'timestamp'"),
    (text("e.csv", "user_id,item_id,timestamp\n" + "1,2,978300000\n" * 150000 + "5000,1,978300000.5\n"), {},
     r"e\.csv: line 150002: '5000,1,978300000\.5' has '978300000\.5' in column 'timestamp'; expected whole numbers"),
    (text("e.csv", "user_id,item_id,timestamp\n1,2,2020-01-01\n1,3,2020-13-45\n"), {},
     r"e\.csv: line 3: '1,3,2020-13-45' has '2020-13-45' in column 'timestamp'; expected a number or an ISO date"),
])
def test_hostile_file_is_one_clear_error(tmp_path, capsys, make_input, params, message):
    assert re.search(message, fails(tmp_path, capsys, make_input, **params))


@pytest.mark.parametrize("content, message", [
    (b"# caf\xe9\nraw:\n  task: inference\n", r"params\.yaml: line 1, column 6: byte 0xe9 is not UTF-8; save the file as UTF-8"),
    (b"raw:\n  task: inference\n  task: test\n", r"params\.yaml: line 4: duplicate key 'raw\.task' \(first given on line 3\); give each key once"),
    (b"raw:\n  task: inference\ntfrecord: {}\nraw: {}\n", r"params\.yaml: line 5: duplicate key 'raw' \(first given on line 1\)"),
    (b"raw:\n  task: [unclosed\n", r"params\.yaml: not valid YAML at line 4, column 1: expected ',' or '\]'"),
    (b"raw:\n  min_history_length: 1\n", r"params\.yaml: raw: raw\.min_history_length \(1\) is below the 3 items raw\.task "
                                         r"train_val_test needs"),
    (b"tfrecord:\n  max_seq_length: 1\n  max_predictions_per_seq: 1\n",
     r"params\.yaml: tfrecord\.max_seq_length: must be at least 2: training windows hold max_seq_length - 1 items "
     r"\(1 gives no training examples\).* \(got 1\)"),
])
def test_hostile_params_file_is_one_clear_error(tmp_path, capsys, content, message):
    project = make_project(tmp_path / "p", write_file(tmp_path, "e.csv", CSV))
    raw_input = f"raw:\n  input: data/external/e.csv\n".encode()
    (project / "params.yaml").write_bytes(content.replace(b"raw:\n", raw_input, 1) if b"raw:\n" in content
                                         else raw_input + content)
    for stage in ("raw", "tfrecord"):
        assert run_stage(stage, project) == 2
        assert re.search(message, single_error(capsys.readouterr().err))
    assert written_files(project) == []


def test_params_file_that_is_a_folder(tmp_path, capsys):
    project = tmp_path / "p"
    (project / "params.yaml").mkdir(parents=True)
    assert run_stage("raw", project) == 2
    assert single_error(capsys.readouterr().err).endswith("params.yaml: is a folder, expected a YAML parameters file")


def test_corrupt_or_foreign_sequences_given_to_tfrecord(tmp_path, capsys):
    project = make_project(tmp_path / "p", write_file(tmp_path, "e.csv", CSV + "2,5\n2,6\n2,7\n"),
                           tfrecord={"num_shards": 1})
    sequences = project / "data" / "interim" / "sequences.parquet"
    assert run_stage("raw", project) == 0
    good = sequences.read_bytes()
    for content, message in [
        (good[: len(good) // 2], "not a readable sequences file, it may be truncated or corrupt"),
        (b"garbage", "not a readable sequences file"),
        (None, "not a sequences file of the raw stage (expected columns user_index, user_id, items; found a, b)"),
    ]:
        if content is None:
            pq.write_table(pa.table({"a": [1], "b": [2]}), sequences)
        else:
            sequences.write_bytes(content)
        capsys.readouterr()
        assert run_stage("tfrecord", project) == 2
        error = single_error(capsys.readouterr().err)
        assert error.startswith(f"error: {sequences}: ") and message in error and error.endswith("rerun the raw stage")
        assert not (project / "data" / "processed").exists() and not (project / "references" / "items.parquet").exists()


def test_corrupt_vocabulary_for_a_test_task(tmp_path, capsys):
    project = make_project(tmp_path / "p", write_file(tmp_path, "e.txt", "1 2\n1 3\n2 3\n2 2\n"),
                           raw={"task": "test"}, tfrecord={"num_shards": 1})
    assert run_stage("raw", project) == 0
    (project / "references" / "items.parquet").write_bytes(b"PAR1 broken")
    assert run_stage("tfrecord", project) == 2
    assert "references/items.parquet: not a readable item vocabulary" in single_error(capsys.readouterr().err)


def test_sequences_written_for_a_shorter_task(tmp_path, capsys):
    """raw ran with task inference (histories of 1 item), then only the task changed."""
    project = make_project(tmp_path / "p", write_file(tmp_path, "e.txt", "1 2\n2 3\n2 4\n2 5\n"),
                           raw={"task": "inference"}, tfrecord={"num_shards": 1})
    assert run_stage("raw", project) == 0
    set_params(project, raw={"task": "train_val_test"})
    assert run_stage("tfrecord", project) == 2
    assert re.search(r"sequences\.parquet: user index 0 has 1 items, but raw\.task train_val_test needs at least 3; "
                     r"rerun the raw stage", single_error(capsys.readouterr().err))
    assert [f for f in written_files(project) if "processed" in f or "items.parquet" in f] == []


def test_num_shards_above_the_number_of_users(tmp_path, capsys):
    project = make_project(tmp_path / "p", write_file(tmp_path, "e.txt", "".join(f"{u} {i}\n" for u in range(4) for i in range(3))),
                           tfrecord={"num_shards": 100000})
    assert run_stage("raw", project) == 0
    assert run_stage("tfrecord", project) == 2
    assert re.search(r"tfrecord\.num_shards \(100000\) is more than the 4 users in .*sequences\.parquet; every shard needs "
                     r"a user: set tfrecord\.num_shards to at most 4", single_error(capsys.readouterr().err))
    assert not (project / "data" / "processed").exists() and not (project / "references" / "items.parquet").exists()


def sequences(project):
    return [(r["user_id"], r["items"]) for r in pq.read_table(project / "data" / "interim" / "sequences.parquet").to_pylist()]


@pytest.mark.parametrize("name, content, params, expected", [
    ("quoted header field holding the separator", '"user,id",item_id\n1,"a,b"\n1,c\n1,"say ""hi"""\n',
     {"columns": {"user": "user,id"}}, [(1, ["a,b", "c", 'say "hi"'])]),
    ("BOM before a header named in raw.columns", "\ufeffwho,what\n1,2\n1,3\n1,4\n",
     {"columns": {"user": "who", "item": "what"}}, [(1, [2, 3, 4])]),
    ("a header of unknown names over text ids, named in raw.columns", "who,what\nu1,i1\nu1,i2\nu2,i3\n",
     {"columns": {"user": "who", "item": "what"}, "task": "inference"}, [("u1", ["i1", "i2"]), ("u2", ["i3"])]),
    ("text ids of one shape, no header", "alice,matrix\nbob,heat\nalice,alien\n", {"task": "inference"},
     [("alice", ["matrix", "alien"]), ("bob", ["heat"])]),
    ("BOM before a headerless file", "\ufeff7 2\n7 3\n7 4\n", {}, [(7, [2, 3, 4])]),
    ("leading comment and blank lines", "# user item\n\n# exported 2024\n1 2\n1 3\n\n1 4\n", {}, [(1, [2, 3, 4])]),
    ("leading comment before a header", "# from the shop\nuser_id,item_id\n1,2\n1,3\n1,4\n", {}, [(1, [2, 3, 4])]),
    ("19-digit ids that fit int64 stay integers", "1 9223372036854775807\n1 -9223372036854775808\n1 1234567890123456789\n",
     {}, [(1, [9223372036854775807, -9223372036854775808, 1234567890123456789])]),
    ("an id beyond int64 keeps every id as text, exactly", "1 9223372036854775808\n1 2\n1 -3\n", {},
     [(1, ["9223372036854775808", "2", "-3"])]),
    ("a 20-digit id", "1 12345678901234567890\n1 2\n1 3\n", {}, [(1, ["12345678901234567890", "2", "3"])]),
    ("negative ids stay integers", "-1 -2\n-1 3\n-1 -4\n", {}, [(-1, [-2, 3, -4])]),
    ("'-0' and '007' are not integers", "1 -0\n1 007\n1 7\n", {}, [(1, ["-0", "007", "7"])]),
    ("MovieLens '::'", "1::20::5::978300760\n1::10::5::978300761\n1::30::5::978300759\n", {}, [(1, [30, 20, 10])]),
    ("semicolons with decimal commas", "1;10;4,5\n1;11;3,0\n1;12;5,0\n", {}, [(1, [10, 11, 12])]),
    ("ISBN-like ids in a headerless file", "u1,043942089X\nu1,0451524934\nu1,0316769487\nu2,0060935464\n",
     {"task": "inference"}, [("u1", ["043942089X", "0451524934", "0316769487"]), ("u2", ["0060935464"])]),
    ("a quoted review spanning lines, whatever the file's size",
     'user_id,item_id,review\n' + "".join(f'1,{i},"good\nvery ""good"""\n' for i in range(120000)), {},
     [(1, list(range(120000)))]),
    ("dates, then times of day after the first 2 MB", "user_id,item_id,time\n" + "1,1,2020-01-01\n" * 150000
     + "1,2,2020-01-02 10:00:00\n", {}, [(1, [1] * 150000 + [2])]),
    ("dates with a zone", "user_id,item_id,time\n1,1,2020-01-02T00:00:00+02:00\n1,2,2020-01-01T23:00:00Z\n1,3,2020-01-03T00:00:00Z\n",
     {}, [(1, [1, 2, 3])]),
    ("a header with a quoted review spanning lines in the first rows",
     'customer,product,review\nc1,1,"great\nstuff"\nc2,2,ok\nc1,3,x\n', {"task": "inference"},
     [("c1", [1, 3]), ("c2", [2])]),
    ("names with spaces in a comma file", "u1,The Big Matrix,2020-01-01 10:00:00\nu1,Star Wars II,2020-01-02 11:00:00\n"
     "u1,Heat,2020-01-03 12:00:00\n", {}, [("u1", ["The Big Matrix", "Star Wars II", "Heat"])]),
    ("Excel's 'sep=' line", "sep=;\r\nuser_id;item_id\r\n1;2\r\n1;3\r\n1;4\r\n", {}, [(1, [2, 3, 4])]),
    ("'::' given in params", "1::20::5::978300760\n1::10::5::978300761\n1::30::5::978300759\n", {"separator": "::"},
     [(1, [30, 20, 10])]),
])
def test_unusual_but_valid_file_is_read_faithfully(tmp_path, name, content, params, expected):
    suffix = ".dat" if "::" in content else ".csv" if "," in content else ".txt"
    project = make_project(tmp_path / "p", write_file(tmp_path, "events" + suffix, content), raw=params)
    assert run_stage("raw", project) == 0, name
    assert sequences(project) == expected


def test_one_user_per_chunk_on_21000_users_with_few_open_files(tmp_path, synthetic_file):
    """users_per_chunk 1 used to keep one open spill file per chunk (too many open files, and
    the spill files stayed behind). The stage now runs under a 64-file limit."""
    data = tmp_path / "many.txt"
    synthetic.write(synthetic.generate(users=21000, items=500, mean_length=5, seed=2), data, "sequence_lines")
    chunked = make_project(tmp_path / "one", data, raw={"users_per_chunk": 1})
    whole = make_project(tmp_path / "all", data)

    def limit_files():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    result = subprocess.run([sys.executable, "-m", "bert4rec.cli", "raw", "--project", str(chunked)],
                            capture_output=True, text=True, preexec_fn=limit_files)
    assert result.returncode == 0, result.stderr[-2000:]
    assert run_stage("raw", whole) == 0
    assert sequences(chunked) == sequences(whole) and len(sequences(whole)) == 21000
    assert sorted(p.name for p in (chunked / "data" / "interim").iterdir()) == ["raw_summary.json", "sequences.parquet"]
