"""The one recommendation path: exact ranks and top-k over chunks of the catalogue."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from bert4rec.data.records import FIRST_ITEM, MASK, PAD
from bert4rec.model import recommend
from bert4rec.model.network import build_model
from bert4rec.params import ModelParams


class RowScorer:
    """Test double: user i's scores are row input_ids[i, 0] of a fixed table."""

    def __init__(self, table, chunk_items):
        self.table = tf.constant(np.asarray(table, dtype=np.float32))
        self.num_tokens = self.table.shape[1]
        self.chunk_items = chunk_items

    def encode(self, input_ids):
        rows = tf.gather(self.table, input_ids[:, 0])
        return rows, rows

    def chunk(self, state, start, size):
        return state[:, start:start + size]

    def at(self, state, tokens):
        return tf.gather(state, tokens, batch_dims=1)


# 2 specials + 6 items (tokens 2..7)
SCORES = np.array([
    [9.0, 9.0, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # target 4: rivals 2, 3 -> rank 2
    [9.0, 9.0, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # target 4, tokens 2 and 3 seen -> rank 0
    [0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # target 2: worst of 6 -> rank 5
    [0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # target PAD (unknown item) -> miss
])
TARGETS = np.array([4, 4, 2, PAD], np.int32)
SEEN = np.array([[0, 0], [2, 3], [0, 0], [0, 0]], np.int32)
ROWS = np.arange(4, dtype=np.int32)[:, None]


def recommend_rows(table, rows, seen, targets, k=10, chunk_items=3, negatives=None, fused=True):
    recommender = recommend.Recommender(RowScorer(table, chunk_items), fused=fused)
    return recommender(np.asarray(rows, np.int32), np.asarray(seen, np.int32), np.asarray(targets, np.int32),
                       negatives, k)


@pytest.mark.parametrize("chunk_items", [3, 8, 100])
def test_ranks_remove_seen_items_and_special_tokens(chunk_items):
    out = recommend_rows(SCORES, ROWS, SEEN, TARGETS, chunk_items=chunk_items)
    assert out["rank"][:3].tolist() == [2, 0, 5]
    assert out["tokens"][1, :3].tolist() == [4, 5, 6]  # seen 2 and 3 never recommended
    np.testing.assert_allclose(out["scores"][1, :3], [0.4, 0.3, 0.2])


def test_ties_count_against_the_target():
    out = recommend_rows(np.zeros((1, 8)), [[0]], np.zeros((1, 0)), [5])
    assert out["rank"].tolist() == [5]


def test_a_seen_target_stays_a_candidate():
    out = recommend_rows(SCORES[:1], [[0]], [[4, 2]], [4])
    assert out["rank"].tolist() == [1]


def test_fewer_candidates_than_k_leave_minus_inf_slots():
    out = recommend_rows(SCORES[:1], [[0]], [[2, 3, 4, 5]], [PAD], k=4)
    assert out["tokens"][0, :2].tolist() == [6, 7] and np.isneginf(out["scores"][0, 2:]).all()


def test_sampled_rank_counts_only_the_given_negatives():
    out = recommend_rows(SCORES, ROWS, SEEN, TARGETS, negatives=np.array([[2, 5], [5, 6], [3, 7], [2, 3]], np.int32))
    assert out["sampled_rank"][:3].tolist() == [1, 0, 2]


def brute_force(scores, seen, targets, k):
    masked = scores.astype(np.float64).copy()
    for row, items in enumerate(seen):
        masked[row, items] = -np.inf
    masked[:, :FIRST_ITEM] = -np.inf
    target_scores = scores[np.arange(len(scores)), targets]
    rivals = masked.copy()
    rivals[np.arange(len(scores)), targets] = -np.inf
    rank = (rivals >= target_scores[:, None]).sum(1)
    order = np.argsort(-masked, axis=1, kind="stable")[:, :k]
    return rank, order


@pytest.mark.parametrize("chunk_items, items, seen_count", [(5, 90, 12), (16, 90, 12), (37, 90, 80), (1000, 90, 12),
                                                        (300, 2000, 150), (1000, 5000, 30), (4000, 9000, 10),
                                                        (65536, 20000, 12)])
@pytest.mark.parametrize("fused", [True, False], ids=["fused kernel", "tensorflow ops"])
def test_chunked_scan_equals_one_pass_over_the_catalogue(chunk_items, items, seen_count, fused):
    rng = np.random.default_rng(chunk_items + items)
    scores = np.round(rng.normal(size=(40, items)), 1).astype(np.float32)  # rounded: many ties
    seen = rng.integers(0, items, size=(40, seen_count)).astype(np.int32)  # repeats included
    seen[:, -3:] = PAD
    targets = rng.integers(FIRST_ITEM, items, size=40).astype(np.int32)
    out = recommend_rows(scores, np.arange(40)[:, None], seen, targets, k=7, chunk_items=chunk_items, fused=fused)
    rank, top = brute_force(scores, seen, targets, 7)  # (4000, 9000, 10) and (65536, 20000, 12): grouped top-k
    assert out["rank"].tolist() == rank.tolist()
    found = np.isfinite(out["scores"])
    assert (out["tokens"][found] == top[found]).all()  # ties: the lower token first, as one top-k would
    assert found.sum(1).tolist() == np.minimum(7, [items - len(set(r) | {0, 1}) for r in seen.tolist()]).tolist()


@pytest.mark.parametrize("chunk_items", [7, 1000])
@pytest.mark.parametrize("fused", [True, False], ids=["fused kernel", "tensorflow ops"])
def test_the_popularity_ranking_equals_the_scan_over_constant_scores(chunk_items, fused):
    rng = np.random.default_rng(chunk_items)
    popularity = np.round(rng.random(60) * 5)  # ties, broken by token order
    popularity[:FIRST_ITEM] = 0
    order = FIRST_ITEM + np.argsort(-popularity[FIRST_ITEM:], kind="stable")
    scores = np.zeros(60, np.float32)
    scores[order] = -np.arange(len(order))  # the same ranking as constant scores
    seen = rng.integers(0, 60, size=(25, 9)).astype(np.int32)
    targets = rng.integers(FIRST_ITEM, 60, size=25).astype(np.int32)
    negatives = np.array([rng.choice(sorted(set(range(FIRST_ITEM, 60)) - set(row) - {t}), 4, replace=False)
                          for row, t in zip(seen.tolist(), targets.tolist())], np.int32)  # as the protocol draws
    fast = recommend.PopularityRecommender(popularity)(np.zeros((25, 1), np.int32), seen, targets, negatives, k=6)
    scan = recommend_rows(np.tile(scores, (25, 1)), np.arange(25)[:, None], seen, targets, k=6,
                          chunk_items=chunk_items, negatives=negatives, fused=fused)
    assert fast["rank"].tolist() == scan["rank"].tolist()
    assert fast["sampled_rank"].tolist() == scan["sampled_rank"].tolist()
    assert fast["tokens"].tolist() == scan["tokens"].tolist()


def test_the_model_scorer_ranks_by_the_network_scores_and_follows_new_weights():
    keras.utils.set_random_seed(0)
    params = ModelParams(hidden_size=16, num_attention_heads=2, intermediate_size=32, max_position_embeddings=8)
    model = build_model(FIRST_ITEM + 300, params)
    recommender = recommend.Recommender(recommend.ModelScorer(model, chunk_items=64))  # 5 chunks, rows reordered
    rng = np.random.default_rng(3)
    ids = rng.integers(FIRST_ITEM, FIRST_ITEM + 300, size=(60, 8)).astype(np.int32)
    ids[:, -1] = MASK
    targets = rng.integers(FIRST_ITEM, FIRST_ITEM + 300, size=60).astype(np.int32)
    out = recommender(ids, ids[:, :-1], targets, k=5)
    scores = model.logits(model.transform(model.encode(ids, training=False, last_only=True)[:, -1])).numpy()
    rank, top = brute_force(scores, ids[:, :-1], targets, 5)
    assert out["rank"].tolist() == rank.tolist() and out["tokens"].tolist() == top.tolist()
    np.testing.assert_allclose(out["scores"], np.take_along_axis(scores, top, 1), rtol=1e-6)

    favourite = FIRST_ITEM + 250
    model.output_bias.assign(tf.tensor_scatter_nd_update(model.output_bias, [[favourite]], [100.0]))
    recommender.scorer.refresh()
    out = recommender(ids, ids[:, :-1], targets, k=5)
    unseen = ~(ids == favourite).any(1)
    assert unseen.sum() > 50 and (out["tokens"][unseen, 0] == favourite).all()


@pytest.mark.parametrize("chunk_items", [1024, 100000])  # several chunks (rows reordered), one chunk
@pytest.mark.parametrize("fused", [True, False], ids=["fused kernel", "tensorflow ops"])
def test_well_ranked_targets_are_counted_inside_the_groups_that_reach_them(chunk_items, fused):
    rng = np.random.default_rng(5)
    scores = rng.normal(size=(30, 5000)).astype(np.float32)
    targets = (np.argsort(-scores[:, FIRST_ITEM:], axis=1)[:, 3] + FIRST_ITEM).astype(np.int32)  # the 4th best
    seen = np.full((30, 1), PAD, np.int32)
    out = recommend_rows(scores, np.arange(30)[:, None], seen, targets, k=5, chunk_items=chunk_items, fused=fused)
    rank, top = brute_force(scores, seen, targets, 5)
    assert out["rank"].tolist() == rank.tolist() == [3] * 30
    assert out["tokens"].tolist() == top.tolist()


def test_scoring_floor_times_a_catalogue_of_several_blocks_with_a_partial_last_one(monkeypatch):
    monkeypatch.setattr(recommend, "CHUNK_ITEMS", 256)
    rate = recommend.scoring_floor(items=3 * 256 + 17, hidden=8, batch=4, repeats=2)
    assert np.isfinite(rate) and rate > 0
