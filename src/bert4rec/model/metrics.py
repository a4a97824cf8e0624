"""Full-ranking next-item metrics from per-user ranks (numpy only).

The rank of a target is the number of candidates scoring at least as high as it: PAD/MASK and
the user's already-seen items are not candidates, the target itself always is, and ties count
against the target (a constant model cannot look good). A target of PAD means "unknown to the
vocabulary" and is a miss. The ranks themselves come from the scoring pass in recommend.py.
Names carry no '@' so MLflow accepts them.
"""

from __future__ import annotations

import numpy as np

from bert4rec.data.records import FIRST_ITEM, PAD

CUTOFFS = (1, 5, 10, 100)
MISS = np.iinfo(np.int64).max  # rank of a target the model cannot rank at all


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


def popularity_scores(counts: np.ndarray, num_tokens: int) -> np.ndarray:
    """Each item's count (ties broken by vocabulary order): the most-popular baseline's scores and
    the weights of the paper's popularity-sampled negatives."""
    scores = np.zeros(num_tokens, dtype=np.float64)
    scores[FIRST_ITEM:FIRST_ITEM + len(counts)] = np.asarray(counts, dtype=np.float64)
    scores[FIRST_ITEM:] -= np.arange(num_tokens - FIRST_ITEM) * 1e-9  # deterministic tie order
    return scores


NEVER_SEEN_LOGP = -1e6  # below any log-popularity plus Gumbel noise, yet drawn when nothing else is left


def sample_negatives(popularity: np.ndarray, targets: np.ndarray, seen: np.ndarray, count: int,
                     rng: np.random.Generator, rows_per_draw: int = 64) -> np.ndarray:
    """The paper's protocol: per user, `count` unseen items other than the target, drawn by
    popularity without replacement (Gumbel top-k). Drawn a few rows at a time, so memory is
    rows_per_draw x catalogue (the random stream is the same as one draw for the whole batch).
    A user with fewer such items gets them all, the rest of the row PAD (no negative): items never
    seen in the histories (popularity 0) come last, after every item with a popularity."""
    weights = np.asarray(popularity, dtype=np.float64)
    logp = np.where(weights > 0, np.log(np.maximum(weights, 1e-300)), NEVER_SEEN_LOGP)
    n = min(count, len(weights) - FIRST_ITEM - 1)
    out = np.empty((len(targets), n), dtype=np.int32)
    for start in range(0, len(targets), rows_per_draw):
        rows = slice(start, start + rows_per_draw)
        keys = logp[None, :] - np.log(-np.log(rng.random((len(targets[rows]), len(weights)))))
        block = np.arange(len(keys))
        keys[np.repeat(block, seen.shape[1]), seen[rows].reshape(-1)] = -np.inf
        keys[:, :FIRST_ITEM] = -np.inf
        keys[block, targets[rows]] = -np.inf
        picked = np.argpartition(-keys, n - 1, axis=1)[:, :n]
        out[rows] = np.where(np.isfinite(np.take_along_axis(keys, picked, 1)), picked, PAD)
    return out


class Evaluation:
    """Accumulates per-user ranks (and the top-10 lists for coverage) over batches."""

    def __init__(self, num_tokens: int):
        self.num_tokens = num_tokens
        self.users: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.ranks: list[np.ndarray] = []
        self.sampled: list[np.ndarray] = []
        self.recommended = np.zeros(num_tokens, dtype=bool)

    def add(self, users, targets, rank, top_tokens, top_scores, sampled_rank=None) -> None:
        targets = np.asarray(targets)
        self.users.append(np.asarray(users))
        self.targets.append(targets)
        self.ranks.append(np.where(targets == PAD, MISS, np.asarray(rank, dtype=np.int64)))
        if sampled_rank is not None:
            self.sampled.append(np.where(targets == PAD, MISS, np.asarray(sampled_rank, dtype=np.int64)))
        self.recommended[np.asarray(top_tokens)[np.isfinite(top_scores)]] = True

    def merge(self, other: "Evaluation") -> "Evaluation":
        """This evaluation extended by another one's users (e.g. another chunk or worker)."""
        for name in ("users", "targets", "ranks", "sampled"):
            getattr(self, name).extend(getattr(other, name))
        self.recommended |= other.recommended
        return self

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything result() needs, as arrays (a worker's part of a split evaluation)."""
        empty = np.zeros(0, dtype=np.int64)
        arrays = {name: np.concatenate(getattr(self, name)) if getattr(self, name) else empty
                  for name in ("users", "targets", "ranks")}
        if self.sampled:
            arrays["sampled"] = np.concatenate(self.sampled)
        return {**arrays, "recommended": self.recommended}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "Evaluation":
        evaluation = cls(len(arrays["recommended"]))
        for name in ("users", "targets", "ranks", "sampled"):
            if name in arrays:
                getattr(evaluation, name).append(arrays[name])
        evaluation.recommended = arrays["recommended"].astype(bool)
        return evaluation

    def per_user(self) -> dict[str, np.ndarray]:
        """user_index, target and 0-based rank (MISS for unknown targets), in user order."""
        users = np.concatenate(self.users) if self.users else np.zeros(0, dtype=np.int64)
        order = np.argsort(users, kind="stable")
        return {"user_index": users[order], "target": np.concatenate(self.targets)[order],
                "rank": np.concatenate(self.ranks)[order]}

    def result(self) -> dict[str, float]:
        rank = np.concatenate(self.ranks) if self.ranks else np.zeros(0, dtype=np.int64)
        out = from_ranks(rank)
        if not out:
            return out
        out["coverage_at_10"] = float(self.recommended[FIRST_ITEM:].sum() / max(self.num_tokens - FIRST_ITEM, 1))
        if self.sampled:
            sampled = from_ranks(np.concatenate(self.sampled), prefix="sampled_")
            out.update({k: v for k, v in sampled.items() if k.split("_at_")[-1] in ("1", "5", "10") or k.endswith("mrr")})
        out["users"] = int(len(np.unique(np.concatenate(self.users))))
        out["targets"] = int(len(rank))  # one per user with leave-one-out; a time split may have more
        return out
