"""The first-order item-to-item baseline: "users who took X next took Y".

Transitions are counted from a split's own input histories (as most-popular is, so no held-out
item leaks in), exactly, in passes over ranges of "from" items: each pass holds at most
`pairs_per_pass` transitions, so memory stays bounded whatever the catalogue (668k items) or the
log. Each item keeps its `max_successors` most frequent successors (sparse rows, CSR).

`TransitionRecommender` ranks like recommend.PopularityRecommender, from positions in one
ranking per user: a user's last item's successors first (by count, then popularity), every
other item in most-popular order; seen items removed, as for every recommender.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bert4rec.data.manifest import Manifest
from bert4rec.model import inputs
from bert4rec.model.recommend import PopularityRecommender, is_seen, distinct_items

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


class TransitionRecommender:
    """The item-to-item baseline as one ranking per user: the unseen successors of the user's last
    item first (by count, then popularity), then every other item in most-popular order. Ranks and
    top-k come from positions in that ranking, so nothing scans the catalogue per user (a
    668k-item catalogue costs what a 3k one does); the same contract as recommend.Recommender:
    ties count against the target, the target stays a candidate, seen items are removed.
    Scores: successors M, M-1, ..., 1 (M = how many the last item has); others -(popularity rank).
    """

    def __init__(self, transitions: Transitions, popularity: np.ndarray):
        self.popular = PopularityRecommender(popularity)
        self.indptr, self.lengths = transitions.indptr, np.diff(transitions.indptr)
        self.tokens = np.r_[transitions.tokens, -1].astype(np.int64)  # -1: no successor
        self.width = max(int(self.lengths.max(initial=0)), 1)

    def successors(self, input_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, scores) of each row's last item's successors (the item before [MASK]); -1 / -inf
        where a row has fewer."""
        last = np.pad(np.asarray(input_ids), [[0, 0], [1, 0]])[:, -2]  # PAD when the history is empty
        offsets = np.arange(self.width)[None, :]
        present = offsets < self.lengths[last][:, None]
        index = np.where(present, self.indptr[last][:, None] + offsets, len(self.tokens) - 1)
        scores = np.where(present, self.lengths[last][:, None] - offsets, -np.inf)
        return self.tokens[index], scores

    def __call__(self, input_ids, seen, targets=None, negatives=None, k: int = 10) -> dict[str, np.ndarray]:
        """Successors first; after them the most-popular ranking with the successors taken out,
        i.e. the most-popular recommender with the successors counted as seen."""
        batch, k = len(input_ids), min(k, len(self.popular.order))
        succ, succ_scores = self.successors(input_ids)
        targets = np.zeros(batch, np.int64) if targets is None else np.asarray(targets, np.int64)
        rest = self.popular(input_ids, np.concatenate([np.asarray(seen), succ], 1), targets, None, k)
        fresh = (succ >= 0) & ~is_seen(succ, distinct_items(seen))
        target_scores = self._scores(succ, succ_scores, targets[:, None])[:, 0]
        rivals = fresh & (succ != targets[:, None]) & (succ_scores >= target_scores[:, None])
        rank = rivals.sum(1) + np.where(target_scores > 0, 0, rest["rank"])
        sampled = np.zeros(batch, np.int64)
        if negatives is not None and np.size(negatives):
            sampled = (self._scores(succ, succ_scores, np.asarray(negatives)) >= target_scores[:, None]).sum(1)
        valid = np.concatenate([fresh, np.isfinite(rest["scores"])], 1)
        pick = np.argsort(~valid, axis=1, kind="stable")[:, :k]  # unseen successors, then the ranking
        tokens = np.take_along_axis(np.concatenate([succ, rest["tokens"]], 1), pick, 1)
        scores = np.take_along_axis(np.concatenate([succ_scores, rest["scores"]], 1), pick, 1)
        return {"tokens": tokens, "scores": np.where(np.take_along_axis(valid, pick, 1), scores, -np.inf).astype(np.float32),
                "rank": rank, "sampled_rank": sampled, "embedding": np.zeros((batch, 0), np.float32)}

    def _scores(self, succ, succ_scores, tokens) -> np.ndarray:
        """Scores of (batch, n) tokens: their successor score, else -(popularity rank)."""
        match = tokens[:, :, None] == succ[:, None, :]
        own = np.where(match, succ_scores[:, None, :], -np.inf).max(2)
        return np.where(match.any(2), own, -self.popular.position[tokens].astype(np.float64))
