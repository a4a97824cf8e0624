import math

import numpy as np
import pytest

from bert4rec.data.records import PAD
from bert4rec.model import metrics


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


def test_evaluation_accumulates_batches_in_user_order_and_coverage():
    evaluation = metrics.Evaluation(num_tokens=2 + 20)
    top = np.tile(np.arange(12, 22), (2, 1))  # everyone gets tokens 12..21
    evaluation.add([3, 1], [5, PAD], [0, 7], top, np.zeros((2, 10)))
    evaluation.add([2], [6], [50], top[:1], np.zeros((1, 10)))
    result = evaluation.result()
    assert result["users"] == 3 and result["hit_at_1"] == pytest.approx(1 / 3)  # PAD target: a miss
    assert result["coverage_at_10"] == pytest.approx(10 / 20)
    per_user = evaluation.per_user()
    assert per_user["user_index"].tolist() == [1, 2, 3]
    assert per_user["rank"].tolist() == [metrics.MISS, 50, 0]


def test_slots_without_a_candidate_are_not_coverage():
    evaluation = metrics.Evaluation(num_tokens=2 + 4)
    evaluation.add([0], [2], [0], np.array([[2, 3, 0]]), np.array([[1.0, 0.5, -np.inf]]))
    assert evaluation.result()["coverage_at_10"] == pytest.approx(2 / 4)


def test_sampled_negatives_are_unseen_items_other_than_the_target():
    popularity = np.array([0, 0, 1, 1, 1, 1, 1, 1], dtype=float)
    drawn = metrics.sample_negatives(popularity, np.array([4, 5]), np.array([[2, 3], [0, 0]]), 3,
                                     np.random.default_rng(0), rows_per_draw=1)
    assert sorted(drawn[0]) == [5, 6, 7]  # seen 2, 3 and the target 4 excluded
    assert 5 not in drawn[1] and drawn[1].min() >= 2


def test_sampled_negatives_draw_the_same_in_blocks():
    popularity = np.arange(30, dtype=float)
    targets, seen = np.full(9, 7), np.zeros((9, 1), dtype=int)
    one = metrics.sample_negatives(popularity, targets, seen, 5, np.random.default_rng(3), rows_per_draw=9)
    blocks = metrics.sample_negatives(popularity, targets, seen, 5, np.random.default_rng(3), rows_per_draw=2)
    assert (np.sort(one, 1) == np.sort(blocks, 1)).all()


def test_a_user_with_fewer_eligible_items_than_asked_gets_them_all_and_pad():
    popularity = np.array([0, 0, 1, 1, 1, 1, 1, 0], dtype=float)  # item 7: never in a history (popularity 0)
    drawn = metrics.sample_negatives(popularity, np.array([4]), np.array([[2, 3]]), 5, np.random.default_rng(0))
    assert sorted(drawn[0]) == [PAD, PAD, 5, 6, 7]  # not the seen 2, 3, the target 4 or PAD/MASK
    for seed in range(20):  # item 7 only once every item with a popularity is drawn
        two = metrics.sample_negatives(popularity, np.array([4]), np.array([[2, 3]]), 2, np.random.default_rng(seed))
        assert sorted(two[0]) == [5, 6]
