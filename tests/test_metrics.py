import math

import numpy as np
import pytest

from bert4rec import metrics
from bert4rec.records import PAD

# 2 specials + 6 items (tokens 2..7)
SCORES = np.array(
    [
        [9.0, 9.0, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # target 4: rivals 2, 3 -> rank 2
        [9.0, 9.0, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # target 4, tokens 2 and 3 seen -> rank 0
        [0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # target 2: worst of 6 -> rank 5
        [0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # target PAD (unknown item) -> miss
    ]
)
TARGETS = np.array([4, 4, 2, PAD])
SEEN = np.array([[0, 0], [2, 3], [0, 0], [0, 0]])


def test_ranks_remove_seen_items_and_special_tokens():
    ranks = metrics.ranks(SCORES, TARGETS, SEEN)
    assert ranks[:3].tolist() == [2, 0, 5]
    assert ranks[3] == metrics.MISS


def test_ties_count_against_the_target():
    assert metrics.ranks(np.zeros((1, 8)), np.array([5]), np.zeros((1, 0), dtype=int)).tolist() == [5]


def test_a_seen_target_stays_a_candidate():
    assert metrics.ranks(SCORES[:1], np.array([4]), np.array([[4, 2]])).tolist() == [1]


def test_hand_computed_metrics():
    result = metrics.from_ranks(np.array([2, 0, 5, metrics.MISS]))
    assert result["hit_at_1"] == pytest.approx(1 / 4)
    assert result["hit_at_5"] == pytest.approx(2 / 4)
    assert result["hit_at_10"] == pytest.approx(3 / 4)
    assert result["hit_at_100"] == pytest.approx(3 / 4)
    assert result["ndcg_at_1"] == pytest.approx(1 / 4)
    assert result["ndcg_at_5"] == pytest.approx((1 / math.log2(4) + 1) / 4)
    assert result["ndcg_at_10"] == pytest.approx((1 / math.log2(4) + 1 + 1 / math.log2(7)) / 4)
    assert result["mrr"] == pytest.approx((1 / 3 + 1 + 1 / 6) / 4)
    assert result["rank100"] == 3
    assert result["rank100_percent"] == pytest.approx(75.0)
    assert not any("@" in key for key in result)


def test_evaluation_accumulates_batches_and_coverage():
    evaluation = metrics.Evaluation(num_tokens=8)
    evaluation.add(SCORES[:2], TARGETS[:2], SEEN[:2])
    evaluation.add(SCORES[2:], TARGETS[2:], SEEN[2:])
    result = evaluation.result()
    assert result["users"] == 4
    assert result["hit_at_5"] == pytest.approx(0.5)
    # every top-10 list holds all unseen items: rows 0/2/3 all 6 items -> coverage 1
    assert result["coverage_at_10"] == pytest.approx(1.0)
    top, values = metrics.top_k(SCORES[1:2], SEEN[1:2], 3)
    assert top.tolist() == [[4, 5, 6]]
    assert values.tolist() == [[0.4, 0.3, 0.2]]


def test_coverage_counts_distinct_recommended_items():
    evaluation = metrics.Evaluation(num_tokens=2 + 20)
    scores = np.tile(np.arange(22, dtype=float), (3, 1))  # everyone gets tokens 21..12
    evaluation.add(scores, np.array([21, 20, 2]), np.zeros((3, 0), dtype=int))
    assert evaluation.result()["coverage_at_10"] == pytest.approx(10 / 20)


def test_sampled_protocol_is_separately_named_and_excludes_seen():
    rng = np.random.default_rng(0)
    popularity = np.array([0, 0, 1, 1, 1, 1, 1, 1], dtype=float)
    # negatives exclude the seen tokens 2, 3 and the target 4 -> exactly tokens 5, 6, 7 remain
    ranks = metrics.sampled_ranks(SCORES[1:2], np.array([4]), np.array([[2, 3]]), popularity, 3, rng)
    assert ranks.tolist() == [0]
    evaluation = metrics.Evaluation(8, popularity, sampled_negatives=3, seed=0)
    evaluation.add(SCORES[2:3], np.array([2]), np.zeros((1, 0), dtype=int))
    result = evaluation.result()
    assert result["sampled_hit_at_1"] == 0.0 and result["sampled_hit_at_5"] == 1.0
    assert result["hit_at_5"] == 0.0  # full ranking: rank 5 of 6
