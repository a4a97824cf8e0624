"""The first-order item-to-item baseline: "users who took X next took Y".

Transitions are counted from a split's own input histories (as most-popular is, so no held-out
item leaks in), exactly, in passes over ranges of "from" items: each pass holds at most
`pairs_per_pass` transitions, so memory stays bounded whatever the catalogue (668k items) or the
log. Each item keeps its `max_successors` most frequent successors (sparse rows, CSR).

`TransitionScorer` plugs into the one recommendation path (recommend.Recommender): a user's last
item's successors rank first (by count, then popularity), every other item follows in
most-popular order; seen items are removed by the Recommender like for every scorer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from bert4rec.data.manifest import Manifest
from bert4rec.model import inputs
from bert4rec.model.recommend import NEG_INF

MAX_SUCCESSORS = 100  # per item; the rest of the catalogue follows in most-popular order
PAIRS_PER_PASS = 1 << 22  # transitions held per counting pass (~100 MB with np.unique's copies)


@dataclass
class Transitions:
    """Each token's best successors: tokens[indptr[x]:indptr[x + 1]], most frequent first."""

    indptr: np.ndarray  # (num_tokens + 1,) int64
    tokens: np.ndarray  # int32
    counts: np.ndarray  # int64, same order as tokens


def pairs(chunk: inputs.EvalRows) -> tuple[np.ndarray, np.ndarray]:
    """(from, to) tokens of consecutive items inside each user's history (never across users)."""
    history = chunk.history
    if len(history) < 2:
        return history[:0], history[:0]
    within = np.ones(len(history) - 1, dtype=bool)
    starts = chunk.offsets[1:-1]
    within[starts[(starts > 0) & (starts < len(history))] - 1] = False
    return history[:-1][within], history[1:][within]


def from_ranges(out_degree: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Consecutive token ranges [lo, hi) whose transitions fit in `budget` (a single token may
    exceed it: its range holds only that token)."""
    cumulative = np.cumsum(out_degree)
    ranges, low = [], 0
    while low < len(out_degree):
        before = int(cumulative[low - 1]) if low else 0
        high = max(int(np.searchsorted(cumulative, before + budget, side="right")), low + 1)
        ranges.append((low, min(high, len(out_degree))))
        low = high
    return ranges


def _best_successors(source, target, counts, popularity, keep: int):
    """Per source token: successors by count, then popularity (then token), the first `keep`."""
    order = np.lexsort((target, -popularity[target], -counts, source))
    source, target, counts = source[order], target[order], counts[order]
    first = np.r_[True, source[1:] != source[:-1]]
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(source)), 0))
    kept = np.arange(len(source)) - group_start < keep
    return source[kept], target[kept], counts[kept]


def count_transitions(manifest: Manifest, split: str, popularity: np.ndarray,
                      max_successors: int = MAX_SUCCESSORS, pairs_per_pass: int = PAIRS_PER_PASS) -> Transitions:
    """Exact transition counts of a split's input histories (each user's once: a time split's later
    records hold earlier targets of the window), top `max_successors` per item."""
    num_tokens = manifest.num_tokens
    out_degree = np.zeros(num_tokens, dtype=np.int64)
    for chunk in inputs.first_histories(manifest, split):
        out_degree += np.bincount(pairs(chunk)[0], minlength=num_tokens)
    parts = []
    for low, high in from_ranges(out_degree, pairs_per_pass):
        if not out_degree[low:high].any():
            continue
        keys = []
        for chunk in inputs.first_histories(manifest, split):
            source, target = pairs(chunk)
            here = (source >= low) & (source < high)
            keys.append((source[here] - low).astype(np.int64) * num_tokens + target[here])
        keys, counts = np.unique(np.concatenate(keys), return_counts=True)
        parts.append(_best_successors(keys // num_tokens + low, keys % num_tokens, counts,
                                      np.asarray(popularity, dtype=np.float64), max_successors))
    source, target, counts = (np.concatenate([p[i] for p in parts]) if parts else np.zeros(0, np.int64)
                              for i in range(3))
    indptr = np.zeros(num_tokens + 1, dtype=np.int64)
    np.cumsum(np.bincount(source, minlength=num_tokens), out=indptr[1:])
    return Transitions(indptr, target.astype(np.int32), counts.astype(np.int64))


def popularity_scores(popularity: np.ndarray) -> np.ndarray:
    """float32 scores that order the items exactly as the float64 popularity does (-rank)."""
    order = np.argsort(-np.asarray(popularity, dtype=np.float64), kind="stable")
    scores = np.empty(len(order), dtype=np.float32)
    scores[order] = -np.arange(len(order), dtype=np.float32)
    return scores


class TransitionScorer:
    """Scores of the item-to-item baseline for the Recommender's chunked scan.

    Successors of the user's last item score M, M-1, ..., 1 in their order (M = how many it
    has); every other item scores -(its most-popular rank) <= 0. All are small integers, exact
    in float32, so the Recommender's comparisons are exact. Per batch only the last items'
    successor rows are gathered (batch x max_successors), never a dense item x item table.
    """

    def __init__(self, transitions: Transitions, popularity: np.ndarray):
        lengths = np.diff(transitions.indptr)
        position = np.arange(len(transitions.tokens)) - np.repeat(transitions.indptr[:-1], lengths)
        scores = (np.repeat(lengths, lengths) - position).astype(np.float32)
        self.num_tokens = len(popularity)
        self.width = int(lengths.max(initial=0))
        self.popular = tf.constant(popularity_scores(popularity))
        self.starts = tf.constant(transitions.indptr[:-1])
        self.lengths = tf.constant(lengths)
        self.tokens = tf.constant(np.r_[transitions.tokens, -1].astype(np.int32))  # -1: no successor
        self.scores = tf.constant(np.r_[scores, 0.0].astype(np.float32))

    def encode(self, input_ids):
        """State: the successor tokens and scores of each row's last item (the one before [MASK])."""
        last = tf.pad(input_ids, [[0, 0], [1, 0]])[:, -2]  # PAD when the history is empty
        offsets = tf.range(self.width, dtype=tf.int64)[None, :]
        present = offsets < tf.gather(self.lengths, last)[:, None]
        index = tf.where(present, tf.gather(self.starts, last)[:, None] + offsets, tf.shape(self.tokens, tf.int64)[0] - 1)
        tokens = tf.where(present, tf.gather(self.tokens, index), -1)
        rows = tf.shape(input_ids)[0]
        return (tokens, tf.where(present, tf.gather(self.scores, index), NEG_INF)), tf.zeros([rows, 0])

    def chunk(self, state, start: int, size: int):
        tokens, scores = state
        batch = tf.shape(tokens)[0]
        base = tf.broadcast_to(self.popular[start:start + size][None, :], [batch, size])
        local = tokens - start
        inside = (local >= 0) & (local < size)
        rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(tokens))
        where = tf.boolean_mask(tf.stack([rows, local], -1), inside)
        return tf.tensor_scatter_nd_update(base, where, tf.boolean_mask(scores, inside))

    def at(self, state, targets):
        tokens, scores = state
        own = tf.reduce_max(tf.where(tokens == targets[:, None], scores, NEG_INF), axis=1)
        return tf.maximum(own, tf.gather(self.popular, targets))
