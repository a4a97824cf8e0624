"""bench-peer's own side (the peer's side needs RecTools in its own virtualenv: `make bench-peer`)."""

import json

import pandas as pd
import yaml

from bert4rec.params import dump_params, parse_params
from bert4rec.tools import bench_peer


def test_the_split_is_leave_one_out_like_our_raw_stage(tmp_path):
    data = tmp_path / "log.txt"
    data.write_text("1 10\n1 11\n1 12\n1 13\n2 20\n2 21\n2 22\n")
    test = bench_peer.write_split(data, tmp_path / "split")
    read = {name: pd.read_csv(tmp_path / "split" / f"{name}.csv") for name in ("train", "history", "test")}
    assert read["train"][["user", "item"]].values.tolist() == [[1, 10], [1, 11], [2, 20]]
    assert read["history"][["user", "item"]].values.tolist() == [[1, 10], [1, 11], [1, 12], [2, 20], [2, 21]]
    assert test[["user", "item"]].values.tolist() == read["test"][["user", "item"]].values.tolist() == [[1, 13], [2, 22]]


def test_our_metrics_on_the_peers_lists(tmp_path):
    lists = tmp_path / "recommendations.csv"
    lists.write_text("user,item,rank\n1,5,1\n1,13,2\n2,7,1\n2,8,2\n3,30,1\n")
    test = pd.DataFrame({"user": [1, 2, 3], "item": [13, 22, 30]})
    scored = bench_peer.our_metrics_of(lists, test)  # ranks 2, miss, 1
    assert scored == {"ndcg_at_10": round((1 / 1.5849625007211562 + 0 + 1) / 3, 4), "hit_at_10": round(2 / 3, 4)}


def test_the_peer_gets_our_models_size_from_the_saved_config():
    config = yaml.safe_load(dump_params(parse_params({"train_val": {"model": {"hidden_size": 32}}})))
    size = bench_peer.model_size(config)
    assert size["hidden"] == 32 and size["layers"] == 2 and size["length"] == config["tfrecord"]["max_seq_length"]
    json.dumps(size)  # handed to the peer's process as JSON


def test_the_table_shows_both_sides_and_the_ratio():
    side = {"ndcg_at_10": 0.2, "hit_at_10": 0.3, "sequences_per_second": 100.0, "users_per_second": 1000.0,
            "peak_rss_mb": 1000}
    text = bench_peer.table({"sasrec": {"ours": side, "theirs": {**side, "sequences_per_second": 50.0}}})
    assert "| sasrec ours / theirs | 1.00 | 1.00 | 2.00 | 1.00 | 1.00 |" in text
