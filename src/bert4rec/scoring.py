"""Batched scoring of eval-style records: metrics, top-k lists, user embeddings, baseline.

The model scores every token on the accelerator; seen-item removal and the metrics themselves
are the pure numpy code in bert4rec.metrics, shared with the most-popular baseline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from bert4rec import dataset, metrics
from bert4rec.errors import UserError
from bert4rec.progress import progress
from bert4rec.records import FIRST_ITEM


# Any batch size and width: one trace serves every length-sorted batch.
TOKENS = tf.TensorSpec([None, None], tf.int32)


def score_function(model):
    """Compiled (scores over all tokens, last-position encoder output) for a batch of inputs."""

    @tf.function(input_signature=[TOKENS])
    def score(input_ids):
        hidden = model.encode(input_ids, training=False, last_only=True)[:, -1]
        return model.logits(model.transform(hidden)), tf.cast(hidden, tf.float32)

    return score


def _batches(records: Path, manifest: dict, split: str, batch_size: int, desc: str):
    total = manifest["splits"][split]["examples"]
    if total == 0:
        raise UserError(f"{records / 'manifest.json'}: the '{split}' split is empty; nothing to evaluate")
    return progress(dataset.eval_batches(records, manifest, split, batch_size), desc=desc, unit=" batches",
                    total=dataset.eval_batch_count(total, batch_size))


def evaluate(model, records: Path, manifest: dict, split: str, batch_size: int, popularity: np.ndarray,
             sampled_negatives: int = 0, seed: int = 0, with_baseline: bool = False, score=None):
    """Full-ranking metrics of the model (and the most-popular baseline) on a split.

    Returns (model metrics, baseline metrics or None, per-user table of user_index/target/rank).
    """
    score = score or score_function(model)
    evaluation = metrics.Evaluation(manifest["num_tokens"], popularity, sampled_negatives, seed)
    baseline = metrics.Evaluation(manifest["num_tokens"], popularity, sampled_negatives, seed) if with_baseline else None
    popular_scores = np.asarray(popularity, dtype=np.float64)
    users, targets, ranks = [], [], []
    for batch in _batches(records, manifest, split, batch_size, f"{split}: scoring"):
        scores, _ = score(batch["input_ids"])
        ranks.append(evaluation.add(scores.numpy(), batch["target"], batch["history"]))
        if baseline is not None:
            baseline.add(np.broadcast_to(popular_scores, (len(batch["target"]), len(popular_scores))),
                         batch["target"], batch["history"])
        users.append(batch["user_index"])
        targets.append(batch["target"])
    users = np.concatenate(users)
    order = np.argsort(users, kind="stable")
    per_user = {"user_index": users[order], "target": np.concatenate(targets)[order],
                "rank": np.concatenate(ranks)[order]}
    return evaluation.result(), (baseline.result() if baseline is not None else None), per_user


def history_counts(records: Path, manifest: dict, split: str) -> np.ndarray:
    """Most-popular scores from the split's own input histories (no held-out item leaks in)."""
    counts = np.zeros(manifest["num_tokens"], dtype=np.float64)
    for chunk in dataset.eval_chunks(records, manifest, split):
        counts += np.bincount(chunk["history_flat"], minlength=len(counts))
    return popularity_scores(counts[FIRST_ITEM:], manifest["num_tokens"])


def popularity_scores(counts: np.ndarray, num_tokens: int) -> np.ndarray:
    """Most-popular baseline: each item's training count (ties broken by vocabulary order)."""
    scores = np.zeros(num_tokens, dtype=np.float64)
    scores[FIRST_ITEM:FIRST_ITEM + len(counts)] = np.asarray(counts, dtype=np.float64)
    scores[FIRST_ITEM:] -= np.arange(num_tokens - FIRST_ITEM) * 1e-9  # deterministic tie order
    return scores


def top_k_function(model, k: int, num_tokens: int):
    """Compiled top-k over candidates with seen items (PAD-padded history) and specials removed."""

    @tf.function(input_signature=[TOKENS, TOKENS])
    def top(input_ids, history):
        hidden = model.encode(input_ids, training=False, last_only=True)[:, -1]
        scores = model.logits(model.transform(hidden))
        rows = tf.broadcast_to(tf.range(tf.shape(history)[0])[:, None], tf.shape(history))
        seen = tf.reshape(tf.stack([rows, history], -1), [-1, 2])
        scores = tf.tensor_scatter_nd_update(scores, seen, tf.fill([tf.shape(seen)[0]], -np.inf))
        special = tf.range(num_tokens) < FIRST_ITEM
        scores = tf.where(special[None, :], tf.constant(-np.inf, scores.dtype), scores)
        values, tokens = tf.math.top_k(scores, k=min(k, num_tokens - FIRST_ITEM))
        return tokens, values, tf.cast(hidden, tf.float32)

    return top


def predict(model, records: Path, manifest: dict, split: str, batch_size: int, k: int, top=None):
    """Top-k tokens and scores per user, plus the user embedding (last-position encoder output).

    Rows are in user order, whatever order the batches came in. `top`: a top_k_function(model,
    k, ...) to reuse (it is traced on its first call).
    """
    top = top or top_k_function(model, k, manifest["num_tokens"])
    users, tokens, values, embeddings = [], [], [], []
    for batch in _batches(records, manifest, split, batch_size, f"{split}: top-{k}"):
        t, v, h = top(batch["input_ids"], batch["history"])
        users.append(batch["user_index"])
        tokens.append(t.numpy())
        values.append(v.numpy())
        embeddings.append(h.numpy())
    users = np.concatenate(users)
    order = np.argsort(users, kind="stable")
    return users[order], np.concatenate(tokens)[order], np.concatenate(values)[order], np.concatenate(embeddings)[order]
