import hashlib
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from bert4rec.data.records import MASK, PAD
from helpers import make_project, run_stage, set_params, shared_file


run = run_stage


def records_dir(project):
    return project / "data" / "processed" / "records"


def manifest(project):
    return json.loads((records_dir(project) / "manifest.json").read_text())


def digests(project):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(records_dir(project).iterdir())}


def read_split(project, split):
    m = manifest(project)
    spec = {k: tf.io.FixedLenFeature([], tf.string) for k in m["splits"][split]["features"]}
    files = [str(records_dir(project) / s["file"]) for s in m["splits"][split]["shards"]]
    rows = []
    for raw in tf.data.TFRecordDataset(files):
        example = tf.io.parse_single_example(raw, spec)
        rows.append({k: tf.io.decode_raw(v, tf.int32).numpy() for k, v in example.items()})
    return rows


def vocabulary(project):
    table = pq.read_table(project / "references" / "items.parquet").to_pylist()
    return {row["item_id"]: row["token"] for row in table}


def histories(project):
    return {r["user_index"]: r["items"] for r in pq.read_table(project / "data" / "interim" / "sequences.parquet").to_pylist()}


@pytest.mark.parametrize("masking", ["static", "dynamic"])
def test_same_bytes_whatever_the_worker_count(synthetic_project, masking):
    set_params(synthetic_project, tfrecord={"masking": masking, "num_shards": 3})
    assert run("raw", synthetic_project) == 0
    results = []
    for pool_size in (1, 3):
        set_params(synthetic_project, tfrecord={"pool_size": pool_size})
        assert run("tfrecord", synthetic_project) == 0
        results.append(digests(synthetic_project))
    assert results[0] == results[1]
    assert len([n for n in results[0] if n.startswith("train-")]) == 3


def test_evaluation_examples_match_histories(synthetic_project):
    assert run("raw", synthetic_project) == 0
    assert run("tfrecord", synthetic_project) == 0
    vocab, users, length = vocabulary(synthetic_project), histories(synthetic_project), 20
    for split, held in (("valid", 2), ("test", 1), ("inference", 0)):
        rows = read_split(synthetic_project, split)
        assert len(rows) == len(users)
        for row in rows:
            items = [vocab[i] for i in users[int(row["user_index"][0])]]
            history = items[: len(items) - held]
            np.testing.assert_array_equal(row["history"], history)
            assert row["target"][0] == (items[-held] if held else PAD)
            window = history[-(length - 1):]
            expected = [PAD] * (length - 1 - len(window)) + window + [MASK]
            np.testing.assert_array_equal(row["input_ids"], expected)


def test_static_training_examples(synthetic_project):
    set_params(synthetic_project, tfrecord={"masking": "static", "dupe_factor": 3, "prop_sliding_window": 0.5})
    assert run("raw", synthetic_project) == 0
    assert run("tfrecord", synthetic_project) == 0
    vocab, users = vocabulary(synthetic_project), histories(synthetic_project)
    train_items = {tuple(vocab[i] for i in items[:-2]) for items in users.values()}
    rows = read_split(synthetic_project, "train")
    lengths = [len(items) - 2 for items in users.values()]
    windows = sum(1 + max(0, (n - 19 - 1) // 10 + 1) for n in lengths)  # window 19, step 10
    assert len(rows) == manifest(synthetic_project)["splits"]["train"]["examples"] == 4 * windows
    mask_last = 0
    for row in rows:
        used = row["masked_lm_ids"] != PAD
        positions = row["masked_lm_positions"][used]
        assert 1 <= used.sum() <= 4
        restored = row["input_ids"].copy()
        restored[positions] = row["masked_lm_ids"][used]
        tokens = restored[restored != PAD]
        assert any(tuple(tokens) == s[i: i + len(tokens)] for s in train_items for i in range(len(s))), tokens
        mask_last += used.sum() == 1 and positions[0] == 19 and row["input_ids"][19] == MASK
    assert mask_last >= len(rows) // 4  # one extra mask-last example per window of the 3 masked copies


def test_dynamic_training_examples_are_unmasked_windows(synthetic_project):
    assert run("raw", synthetic_project) == 0
    assert run("tfrecord", synthetic_project) == 0
    m = manifest(synthetic_project)
    assert m["masking"] == "dynamic" and m["splits"]["train"]["features"] == {"input_ids": 20}
    rows = read_split(synthetic_project, "train")
    assert all(MASK not in row["input_ids"] and row["input_ids"][-1] != PAD for row in rows)
    assert m["params_hash"] and "pool_size" not in m["params"]


def test_test_task_reuses_vocabulary_and_counts_unknown_items(tmp_path, synthetic_project):
    assert run("raw", synthetic_project) == 0
    assert run("tfrecord", synthetic_project) == 0
    vocab_bytes = (synthetic_project / "references" / "items.parquet").read_bytes()
    new = tmp_path / "new.txt"
    new.write_text("1 1\n1 2\n1 99999\n2 99999\n2 1\n2 2\n")
    make_project(synthetic_project, new, raw={"input": str(new), "task": "test"}, tfrecord={"num_shards": 2})
    assert run("raw", synthetic_project) == 0
    assert run("tfrecord", synthetic_project) == 0
    assert (synthetic_project / "references" / "items.parquet").read_bytes() == vocab_bytes
    m = manifest(synthetic_project)
    assert set(m["splits"]) == {"test"}
    assert m["unknown_items"] == {"input_items": 1, "targets": 1}  # user 1's unknown target is no history item
    rows = sorted(read_split(synthetic_project, "test"), key=lambda r: r["user_index"][0])
    vocab = vocabulary(synthetic_project)
    assert rows[0]["target"][0] == PAD  # unknown target: a miss, not a crash
    np.testing.assert_array_equal(rows[0]["history"], [vocab[1], vocab[2]])
    np.testing.assert_array_equal(rows[1]["history"], [vocab[1]])  # unknown input item dropped
    assert rows[1]["target"][0] == vocab[2]


def test_inference_without_vocabulary_is_an_error(tmp_path, capsys, synthetic_file):
    project = make_project(tmp_path / "p", synthetic_file, raw={"task": "inference"})
    assert run("raw", project) == 0
    assert run("tfrecord", project) == 2
    err = capsys.readouterr().err
    assert "references/items.parquet: no saved item vocabulary" in err
    assert not records_dir(project).exists()


def test_tfrecord_before_raw_is_an_error(synthetic_project, capsys):
    assert run("tfrecord", synthetic_project) == 2
    assert "sequences not found; run the raw stage first" in capsys.readouterr().err


def test_ml1m_predecessor_settings(tmp_path):
    project = make_project(
        tmp_path / "ml1m", shared_file("ml-1m/ml-1m.txt.gz"),
        tfrecord={"masking": "static", "max_seq_length": 200, "max_predictions_per_seq": 20, "dupe_factor": 10,
                  "prop_sliding_window": 0.5, "pool_size": 2, "num_shards": 2},
    )
    assert run("raw", project) == 0
    assert run("tfrecord", project) == 0
    m = manifest(project)
    assert m["vocab_size"] == 3416
    assert {s: v["examples"] for s, v in m["splits"].items()} == {
        "train": 112992, "valid": 6040, "test": 6040, "inference": 6040,
    }
