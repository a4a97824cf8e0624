"""Full-ranking next-item metrics, vectorised over a batch of users (numpy only).

Scores cover every token (0 PAD, 1 MASK, items from 2). PAD/MASK and the user's already-seen
items are removed from the candidates (the target itself always stays a candidate). Ties count
against the target (pessimistic rank), so a constant model cannot look good. A target of 0 (PAD)
means "unknown to the vocabulary" and is a miss. Names carry no '@' so MLflow accepts them.
"""

from __future__ import annotations

import numpy as np

from bert4rec.records import FIRST_ITEM, PAD

CUTOFFS = (1, 5, 10, 100)
MISS = np.iinfo(np.int64).max  # rank of a target the model cannot rank at all


def candidate_scores(scores: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Scores with special tokens and seen items (PAD-padded token rows) set to -inf."""
    scores = np.array(scores, dtype=np.float64, copy=True)
    rows = np.repeat(np.arange(len(scores)), seen.shape[1]) if seen.size else np.zeros(0, dtype=np.int64)
    cols = seen.reshape(-1).astype(np.int64)
    scores[rows, cols] = -np.inf
    scores[:, :FIRST_ITEM] = -np.inf
    return scores


def ranks(scores: np.ndarray, targets: np.ndarray, seen: np.ndarray | None = None) -> np.ndarray:
    """0-based rank of each target among the candidates; MISS for PAD targets."""
    scores = np.asarray(scores)
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    seen = np.zeros((len(targets), 0), dtype=np.int64) if seen is None else np.asarray(seen)
    target_scores = np.asarray(scores, dtype=np.float64)[np.arange(len(targets)), targets]
    masked = candidate_scores(scores, seen)
    masked[np.arange(len(targets)), targets] = -np.inf  # the target itself is not a rival
    result = (masked >= target_scores[:, None]).sum(axis=1).astype(np.int64)
    return np.where(targets == PAD, MISS, result)


def top_k(scores: np.ndarray, seen: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best candidate tokens per row (best first) and their scores."""
    masked = candidate_scores(scores, seen)
    k = min(k, masked.shape[1])
    part = np.argpartition(-masked, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(masked, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_scores, order, axis=1)


def from_ranks(rank: np.ndarray, prefix: str = "") -> dict[str, float]:
    """NDCG/HR at the cutoffs, MRR, rank100 (count in top 100) and rank100_percent."""
    rank = np.asarray(rank, dtype=np.int64)
    if not len(rank):
        return {}
    hit = rank[:, None] < np.asarray(CUTOFFS)[None, :]
    gain = np.where(rank == MISS, 0.0, 1.0 / np.log2(np.minimum(rank, 1 << 40).astype(np.float64) + 2.0))
    reciprocal = np.where(rank == MISS, 0.0, 1.0 / (np.minimum(rank, 1 << 40).astype(np.float64) + 1.0))
    out = {}
    for i, cutoff in enumerate(CUTOFFS):
        out[f"{prefix}ndcg_at_{cutoff}"] = float(np.mean(np.where(hit[:, i], gain, 0.0)))
    for i, cutoff in enumerate(CUTOFFS):
        out[f"{prefix}hit_at_{cutoff}"] = float(np.mean(hit[:, i]))
    out[f"{prefix}mrr"] = float(np.mean(reciprocal))
    if not prefix:
        out["rank100"] = int(hit[:, CUTOFFS.index(100)].sum())
        out["rank100_percent"] = float(100.0 * np.mean(hit[:, CUTOFFS.index(100)]))
    return out


def sampled_ranks(
    scores: np.ndarray,
    targets: np.ndarray,
    seen: np.ndarray,
    popularity: np.ndarray,
    num_negatives: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """The paper's protocol: rank of the target among `num_negatives` unseen items drawn by
    popularity without replacement (Gumbel top-k), per user."""
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    weights = np.asarray(popularity, dtype=np.float64)
    logp = np.where(weights > 0, np.log(np.maximum(weights, 1e-300)), -np.inf)
    keys = logp[None, :] - np.log(-np.log(rng.random((len(targets), len(weights)))))
    keys = candidate_scores(keys, seen)
    keys[np.arange(len(targets)), targets] = -np.inf
    n = min(num_negatives, keys.shape[1] - FIRST_ITEM - 1)
    negatives = np.argpartition(-keys, n - 1, axis=1)[:, :n]
    target_scores = np.asarray(scores, dtype=np.float64)[np.arange(len(targets)), targets]
    negative_scores = np.take_along_axis(np.asarray(scores, dtype=np.float64), negatives, axis=1)
    result = (negative_scores >= target_scores[:, None]).sum(axis=1).astype(np.int64)
    return np.where(targets == PAD, MISS, result)


class Evaluation:
    """Accumulates ranks and top-10 lists over batches; `result()` gives the metric dict."""

    def __init__(self, num_tokens: int, popularity: np.ndarray | None = None, sampled_negatives: int = 0, seed: int = 0):
        self.num_tokens = num_tokens
        self.popularity = popularity
        self.sampled_negatives = sampled_negatives
        self.rng = np.random.default_rng(seed)
        self.ranks: list[np.ndarray] = []
        self.sampled: list[np.ndarray] = []
        self.recommended = np.zeros(num_tokens, dtype=bool)

    def add(self, scores: np.ndarray, targets: np.ndarray, seen: np.ndarray) -> np.ndarray:
        rank = ranks(scores, targets, seen)
        self.ranks.append(rank)
        top, _ = top_k(scores, seen, 10)
        self.recommended[top.reshape(-1)] = True
        if self.sampled_negatives:
            self.sampled.append(
                sampled_ranks(scores, targets, seen, self.popularity, self.sampled_negatives, self.rng)
            )
        return rank

    def result(self) -> dict[str, float]:
        rank = np.concatenate(self.ranks) if self.ranks else np.zeros(0, dtype=np.int64)
        out = from_ranks(rank)
        if not out:
            return out
        out["coverage_at_10"] = float(self.recommended[FIRST_ITEM:].sum() / max(self.num_tokens - FIRST_ITEM, 1))
        if self.sampled:
            sampled = from_ranks(np.concatenate(self.sampled), prefix="sampled_")
            out.update({k: v for k, v in sampled.items() if k.split("_at_")[-1] in ("1", "5", "10") or k.endswith("mrr")})
        out["users"] = int(len(rank))
        return out
