"""The item-to-item transition baseline: exact sparse counts, bounded passes, ranks equal to a dense table's."""

from collections import Counter

import numpy as np
import pytest

from bert4rec import cli
from bert4rec.data.manifest import Manifest
from bert4rec.data.records import FIRST_ITEM, PAD
from bert4rec.model import inputs, recommend, transitions


def rows(histories):
    offsets = np.r_[0, np.cumsum([len(h) for h in histories])].astype(np.int64)
    flat = np.array([t for h in histories for t in h], np.int32)
    return inputs.EvalRows(np.arange(len(histories)), np.zeros(len(histories), np.int32),
                           np.zeros((len(histories), 2), np.int32), flat, offsets)


def test_pairs_stay_inside_each_users_history():
    source, target = transitions.pairs(rows([[], [2, 3, 4], [5], [], [6, 7], []]))
    assert list(zip(source.tolist(), target.tolist())) == [(2, 3), (3, 4), (6, 7)]
    assert transitions.pairs(rows([[], [9]]))[0].size == 0


def test_ranges_fit_the_budget_and_cover_every_token():
    degree = np.array([0, 3, 1, 9, 0, 2, 2, 0])
    ranges = transitions.from_ranges(degree, 4)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(degree)
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(degree[lo:hi].sum() <= 4 or hi - lo == 1 for lo, hi in ranges)
    assert (3, 4) in ranges  # a token over the budget alone


@pytest.fixture
def manifest(synthetic_project):
    assert cli.main(["raw", "--project", str(synthetic_project)]) == 0
    assert cli.main(["tfrecord", "--project", str(synthetic_project)]) == 0
    return Manifest.read(synthetic_project / "data" / "processed" / "records")


def histories(manifest):
    return [rows_.history[rows_.offsets[i]:rows_.offsets[i + 1]].tolist()
            for rows_ in inputs.eval_chunks(manifest, "test") for i in range(len(rows_))]


def test_counts_are_exact_whatever_the_pass_budget(manifest):
    popularity = recommend.history_popularity(manifest, "test")
    expected = Counter((a, b) for h in histories(manifest) for a, b in zip(h, h[1:]))
    one_pass = transitions.count_transitions(manifest, "test", popularity, max_successors=1000)
    many = transitions.count_transitions(manifest, "test", popularity, max_successors=1000, pairs_per_pass=7)
    for counted in (one_pass, many):
        found = {(x, int(t)): int(c) for x in range(manifest.num_tokens)
                 for t, c in zip(counted.tokens[counted.indptr[x]:counted.indptr[x + 1]],
                                 counted.counts[counted.indptr[x]:counted.indptr[x + 1]])}
        assert found == dict(expected)
    np.testing.assert_array_equal(one_pass.indptr, many.indptr)
    np.testing.assert_array_equal(one_pass.tokens, many.tokens)


def test_each_item_keeps_its_best_successors_by_count_then_popularity(manifest):
    popularity = recommend.history_popularity(manifest, "test")
    full = transitions.count_transitions(manifest, "test", popularity, max_successors=1000)
    top = transitions.count_transitions(manifest, "test", popularity, max_successors=3, pairs_per_pass=50)
    for x in range(manifest.num_tokens):
        tokens = full.tokens[full.indptr[x]:full.indptr[x + 1]].tolist()
        counts = full.counts[full.indptr[x]:full.indptr[x + 1]].tolist()
        assert tokens == sorted(tokens, key=lambda t: (-counts[tokens.index(t)], -popularity[t], t))
        assert top.tokens[top.indptr[x]:top.indptr[x + 1]].tolist() == tokens[:3]


def brute_force_scores(manifest, counted, popularity, last_items):
    """Dense scores: successors of the last item by their order, then most-popular order."""
    order = np.argsort(-np.asarray(popularity, np.float64), kind="stable")
    scores = np.empty((len(last_items), manifest.num_tokens))
    for row, last in enumerate(last_items):
        scores[row, order] = -np.arange(manifest.num_tokens, dtype=np.float64) - 1e6
        successors = counted.tokens[counted.indptr[last]:counted.indptr[last + 1]]
        scores[row, successors] = -np.arange(len(successors), dtype=np.float64)
    return scores


def test_ranks_and_top_k_match_a_dense_table_with_seen_items_removed(manifest):
    popularity = recommend.history_popularity(manifest, "test")
    counted = transitions.count_transitions(manifest, "test", popularity, max_successors=4)
    recommender = transitions.TransitionRecommender(counted, popularity)
    checked, rng = 0, np.random.default_rng(3)
    for batch in inputs.eval_batches(manifest, "test", batch_size=16):
        negatives = rng.integers(FIRST_ITEM, manifest.num_tokens, size=(len(batch.target), 6))
        out = recommender(batch.input_ids, batch.history, batch.target, negatives, k=5)
        last = np.pad(batch.input_ids, [[0, 0], [1, 0]])[:, -2]
        scores = brute_force_scores(manifest, counted, popularity, last)
        masked = scores.copy()
        masked[:, :FIRST_ITEM] = -np.inf
        for row, seen in enumerate(batch.history):
            masked[row, seen[seen != PAD]] = -np.inf
            target = batch.target[row]
            rivals = masked[row].copy()
            rivals[target] = -np.inf
            assert out["rank"][row] == (rivals >= scores[row, target]).sum()
            assert out["sampled_rank"][row] == (scores[row, negatives[row]] >= scores[row, target]).sum()
            assert out["tokens"][row].tolist() == np.argsort(-masked[row], kind="stable")[:5].tolist()
            assert not set(out["tokens"][row].tolist()) & set(seen.tolist())
            checked += 1
    assert checked == manifest.split("test").examples


def test_the_baseline_beats_most_popular_when_successors_are_predictable(tmp_path):
    from bert4rec.tools import synthetic
    from helpers import make_project

    data = tmp_path / "events.txt"
    synthetic.write(synthetic.generate(users=300, items=200, mean_length=20, seed=5, follow_prob=0.9, successors=1,
                                        zipf=0.5),
                    data, "sequence_lines")
    project = make_project(tmp_path / "projects" / "follow", data,
                           tfrecord={"max_seq_length": 20, "max_predictions_per_seq": 4, "num_shards": 2, "pool_size": 1})
    assert cli.main(["raw", "--project", str(project)]) == 0 and cli.main(["tfrecord", "--project", str(project)]) == 0
    manifest = Manifest.read(project / "data" / "processed" / "records")
    popularity = recommend.history_popularity(manifest, "test")
    recommenders = {"popular": recommend.PopularityRecommender(popularity),
                    "item_to_item": transitions.TransitionRecommender(
                        transitions.count_transitions(manifest, "test", popularity), popularity)}
    results = recommend.evaluate(recommenders, manifest, "test", 64)
    assert results["item_to_item"].result()["ndcg_at_10"] > 2 * results["popular"].result()["ndcg_at_10"]
