"""The sweep table: sorted by the validation metric, baselines last, the same rows in the CSV."""

import csv

from bert4rec.workflow.comparison import BASELINE, Row, Scores, ordered, table, write_csv

KEYS = ["train_val.learning_rate"]


def rows():
    return [
        Row("s-1-p1", "done", {KEYS[0]: 0.001}, Scores(0.10, 0.20), Scores(0.30, 0.40), 12.5),
        Row("s-1-p2", "failed", {KEYS[0]: 0.002}),
        Row("s-1-p3", "done", {KEYS[0]: 0.003}, Scores(0.15, 0.25), Scores(0.05, 0.10), 11.0),
        Row("s-1-p4", "done", {KEYS[0]: 0.004}, Scores(0.10, 0.30), Scores(0.01, 0.02), 9.0),
        Row("most_popular", BASELINE, test=Scores(0.02, 0.04)),
    ]


def test_best_validation_first_ties_in_sweep_order_then_unscored_then_baselines():
    assert [r.name for r in ordered(rows())] == ["s-1-p3", "s-1-p1", "s-1-p4", "s-1-p2", "most_popular"]


def test_the_test_split_never_reorders():
    best_test_first = ordered(rows())[0]
    assert best_test_first.test.ndcg_at_10 < max(r.test.ndcg_at_10 for r in rows() if r.test)


def test_table_and_csv_hold_the_same_sorted_rows(tmp_path):
    shown = table(ordered(rows()), KEYS).splitlines()
    assert shown[0].split() == ["experiment", "status", KEYS[0], "valid_ndcg_at_10", "valid_hit_at_10",
                                "test_ndcg_at_10", "test_hit_at_10", "training_seconds"]
    assert shown[2].split() == ["s-1-p3", "done", "0.003", "0.1500", "0.2500", "0.0500", "0.1000", "11.0"]
    assert shown[-1].split() == ["most_popular", "baseline", "0.0200", "0.0400"]
    path = write_csv(tmp_path / "sweeps" / "s-1.csv", ordered(rows()), KEYS)
    with open(path, newline="") as handle:
        written = list(csv.DictReader(handle))
    assert [r["experiment"] for r in written] == ["s-1-p3", "s-1-p1", "s-1-p4", "s-1-p2", "most_popular"]
    assert float(written[0]["valid_ndcg_at_10"]) == 0.15 and written[3]["valid_ndcg_at_10"] == ""
    assert written[4][KEYS[0]] == "" and float(written[4]["test_hit_at_10"]) == 0.04
