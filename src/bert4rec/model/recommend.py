"""The one recommendation path: score the catalogue, drop special and seen items, take the exact
top-k and the exact rank of a target. Evaluation, inference, the SavedModel (and through it the
MLflow pyfunc) all go through `Recommender`.

Scores stay float32 inside one compiled function and the catalogue is scored in blocks of
`chunk_items` items, so memory is bounded by batch x chunk whatever the catalogue or the number
of users. Per block: every item scoring at least as high as the target is counted, and the scores
of the seen items, the target and any sampled negatives are picked up; at the end the seen items
(and PAD/MASK) that reach the target and the target itself are taken off the count (ties count
against the target). Per chunk of blocks, the exact top-k unseen items (_chunk_top) are merged
into the running top-k (a stable merge: equal scores keep the lower token first, as one top-k over
the whole catalogue would). Nothing writes into the (batch x block) scores. Where the fused
kernel builds (model/kernel.py) one read of them gives the group maxima and the counts; elsewhere
TensorFlow's ops read them for the group maxima and again for the count, item by item only in rows
whose target most groups reach (the others count inside the groups that reach it). A target's own
score comes from the same matmul kernel as the block scores, so the comparisons are exact."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from bert4rec.data.manifest import Manifest
from bert4rec.data.records import FIRST_ITEM, MASK, PAD
from bert4rec.errors import UserError
from bert4rec.model import inputs, kernel, metrics
from bert4rec.model.distribute import Worker
from bert4rec.progress import progress

CHUNK_ITEMS = 32768  # items per scoring matmul (a block); measured fastest at 668k items with oneDNN (README)
CHUNK_BLOCKS = 4  # blocks per chunk: the top-k is taken per chunk
GROUP = 64  # items per group of a block (see _chunk_top and _count_at_least)
DENSE_SHARE = 0.5  # above this share of groups reaching the target, compare every item (_dense_first)
NOT_A_TOKEN = np.iinfo(np.int32).max
TOKENS = tf.TensorSpec([None, None], tf.int32)
SIGNATURE = [TOKENS, TOKENS, tf.TensorSpec([None], tf.int32), TOKENS, tf.TensorSpec([], tf.int32)]
NEG_INF = float("-inf")


class ModelScorer(tf.Module):
    """Scores of a trained network: the head at the [MASK] slot against the tied item table.

    Scoring reads a float32 copy of the item table, transposed, with the output bias as one more
    row, in blocks of `chunk_items` items (one variable, blocks first, the last block padded with
    items that score -inf), and the head output gets a column of ones: one matmul gives a block's
    biased scores, with no transpose copy and no bias pass per batch. `refresh()` copies the
    weights again (validation during training).
    """

    def __init__(self, model, chunk_items: int = CHUNK_ITEMS):
        super().__init__(name="scorer")
        self.model = model
        self.num_tokens = model.num_tokens
        self.chunk_items = min(chunk_items, -(-self.num_tokens // GROUP) * GROUP)  # a small catalogue: one block
        self.table = tf.Variable(self._blocks(), trainable=False, name="scoring_table")

    def _blocks(self):
        """(blocks, hidden + 1, chunk_items): a block's items in columns, bias in the last row."""
        table = tf.cast(tf.convert_to_tensor(self.model.item_embedding.embeddings), tf.float32)
        bias = tf.cast(tf.convert_to_tensor(self.model.output_bias), tf.float32)
        blocks = -(-self.num_tokens // self.chunk_items)
        missing = blocks * self.chunk_items - self.num_tokens
        table = tf.pad(tf.transpose(table), [[0, 0], [0, missing]])
        bias = tf.pad(bias, [[0, missing]], constant_values=NEG_INF)
        table = tf.concat([table, bias[None]], 0)
        return tf.transpose(tf.reshape(table, [-1, blocks, self.chunk_items]), [1, 0, 2])

    def refresh(self) -> None:
        self.table.assign(self._blocks())

    def encode(self, input_ids):
        """(head output with a column of ones, user embedding = encoder output at the last position).

        A causal model reads the next item at the last item's position: the trailing [MASK] of
        the evaluation input is dropped (a PAD in its place when it is all there is: a batch of
        empty histories), so an empty history reads the same whatever its batch.
        """
        if self.model.causal:
            input_ids = tf.cond(tf.shape(input_ids)[1] > 1, lambda: input_ids[:, :-1],
                                lambda: tf.fill(tf.shape(input_ids), tf.constant(PAD, input_ids.dtype)))
        hidden = self.model.encode(input_ids, training=False, last_only=True)[:, -1]
        head = tf.cast(self.model.transform(hidden), tf.float32)
        return tf.concat([head, tf.ones_like(head[:, :1])], 1), tf.cast(hidden, tf.float32)

    def chunk(self, state, start: int, size: int):
        """Scores of the block at `start` (chunk_items wide; past the catalogue: -inf)."""
        return tf.matmul(state, self.table[start // self.chunk_items])

    def at(self, state, tokens):
        """Each row's score for its own token, from the same matmul kernel as its block's scores."""
        table = tf.convert_to_tensor(self.table)  # a gather on the variable would make every later read a copy
        rows = tf.range(table.shape[1])[:, None] + tf.zeros_like(tokens)  # (hidden + 1, batch)
        block = tf.broadcast_to(tokens // self.chunk_items, tf.shape(rows))
        column = tf.broadcast_to(tokens % self.chunk_items, tf.shape(rows))
        return tf.linalg.diag_part(tf.matmul(state, tf.gather_nd(table, tf.stack([block, rows, column], -1))))


def is_seen(tokens: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Whether tokens[b, i] is among seen[b] (rows sorted): one search over (row, token) keys."""
    rows = np.arange(len(tokens), dtype=np.int64)[:, None]
    span = np.int64(max(int(tokens.max(initial=0)), int(seen.max(initial=0))) + 2)
    keys = (rows * span + seen + 1).reshape(-1)  # sorted: rows ascend, each row ascends
    wanted = (rows * span + tokens + 1).reshape(-1)
    where = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return (keys[where] == wanted).reshape(tokens.shape) if len(keys) else np.zeros(tokens.shape, bool)


def distinct_items(seen) -> np.ndarray:
    """Each row's items once, sorted, specials and repeats as -1 (which sort first)."""
    seen = np.sort(np.where(np.asarray(seen) < FIRST_ITEM, -1, seen), axis=1)
    return np.sort(np.where(np.diff(seen, axis=1, prepend=-2) == 0, -1, seen), axis=1)


class PopularityRecommender:
    """The most-popular baseline: one ranking of the items for everyone, so a target's rank and
    the top-k come from positions in that ranking, not from scoring the catalogue per user
    (the same results as the chunked scan over constant scores, at a cost of seen items per user)."""

    def __init__(self, popularity: np.ndarray):
        popularity = np.asarray(popularity, dtype=np.float64)
        self.order = FIRST_ITEM + np.argsort(-popularity[FIRST_ITEM:], kind="stable")  # items, best first
        self.position = np.full(len(popularity), len(popularity), dtype=np.int64)  # specials: never candidates
        self.position[self.order] = np.arange(len(self.order))

    def __call__(self, input_ids, seen, targets=None, negatives=None, k: int = 10) -> dict[str, np.ndarray]:
        batch = len(input_ids)
        seen = distinct_items(seen)
        targets = np.zeros(batch, np.int64) if targets is None else np.asarray(targets, np.int64)
        at = self.position[targets][:, None]
        seen_position = np.where(seen >= FIRST_ITEM, self.position[np.maximum(seen, 0)], len(self.position))
        rank = at[:, 0] - ((seen_position < at) & (seen != targets[:, None])).sum(1)
        sampled = np.zeros(batch, np.int64)
        if negatives is not None and negatives.size:
            sampled = (self.position[negatives] < at).sum(1)
        k = min(k, len(self.order))
        candidates = self.order[:k + seen.shape[1]]
        fresh = ~is_seen(np.broadcast_to(candidates, (batch, len(candidates))), seen)
        pick = np.argsort(~fresh, axis=1, kind="stable")[:, :k]  # the first k unseen, in ranking order
        tokens = candidates[pick]
        scores = np.where(np.take_along_axis(fresh, pick, 1), -self.position[tokens].astype(np.float32), -np.inf)
        return {"tokens": tokens, "scores": scores, "rank": rank, "sampled_rank": sampled,
                "embedding": np.zeros((batch, 0), np.float32)}


def _merge_top(best_scores, best_tokens, scores, tokens, k):
    merged, position = tf.math.top_k(tf.concat([best_scores, scores], 1), k=k)
    return merged, tf.gather(tf.concat([best_tokens, tokens], 1), position, batch_dims=1)


def _in_chunk(scores, tokens, start: int, size: int):
    """(scores of `tokens` that fall in this chunk, whether they do); others read as -inf."""
    local = tokens - start
    inside = (local >= 0) & (local < size)
    values = tf.gather(scores, tf.clip_by_value(local, 0, size - 1), batch_dims=1)
    return tf.where(inside, values, NEG_INF), inside


def unique_sorted(seen):
    """Each row's distinct tokens in ascending order, padded at the end with NOT_A_TOKEN."""
    seen = tf.sort(seen, axis=1)
    repeat = tf.concat([tf.zeros_like(seen[:, :1], tf.bool), seen[:, 1:] == seen[:, :-1]], 1)
    return tf.sort(tf.where(repeat, NOT_A_TOKEN, seen), axis=1)


def _is_member(tokens, sorted_rows):
    """Whether each token of a row is in that row's sorted set."""
    width = tf.shape(sorted_rows)[1]
    where = tf.minimum(tf.searchsorted(sorted_rows, tokens), width - 1)
    return tf.gather(sorted_rows, where, batch_dims=1) == tokens


def _groups(scores):
    """The chunk as (batch, groups, GROUP) contiguous groups of items (padded with -inf)."""
    batch, size = tf.shape(scores)[0], scores.shape[1]
    groups = -(-size // GROUP)
    padded = tf.pad(scores, [[0, 0], [0, groups * GROUP - size]], constant_values=NEG_INF)
    return tf.reshape(padded, [batch, groups, GROUP])


def _count_true(groups):
    """Trues along the last axis (GROUP long): through uint8, as TensorFlow's bool -> int32 cast
    on the CPU costs more than the matmul that produced the scores."""
    return tf.cast(tf.reduce_sum(tf.cast(groups, tf.uint8), -1), tf.int32)


def _count_at_least(layout, maxima, threshold, dense_rows):
    """Per row, how many items score >= threshold. Rows [0, dense_rows) compare every item; the
    others only the items of groups whose maximum reaches the threshold (few for a well-ranked
    target). Slicing leading rows copies nothing."""
    dense = tf.reduce_sum(_count_true(layout[:dense_rows] >= threshold[:dense_rows, :, None]), 1)
    layout, maxima, threshold = layout[dense_rows:], maxima[dense_rows:], threshold[dense_rows:]
    hits = tf.where(maxima >= threshold)  # (row, group) pairs
    rows = tf.cast(hits[:, 0], tf.int32)
    above = tf.gather_nd(layout, hits) >= tf.gather(threshold[:, 0], rows)[:, None]
    return tf.concat([dense, tf.math.unsorted_segment_sum(_count_true(above), rows, tf.shape(layout)[0])], 0)


def _reach_share(maxima, threshold):
    """Per row, the share of a chunk's groups whose maximum reaches the row's threshold."""
    return tf.reduce_mean(tf.cast(maxima >= threshold, tf.float32), 1)


def _dense_first(share):
    """A row order for the rest of the scan, from the first chunk's shares: rows whose target is
    reached in more than DENSE_SHARE of the groups (a poorly ranked target) first, to be counted
    item by item, then the others; and how many rows are of the first kind."""
    order = tf.argsort(share, direction="DESCENDING", stable=True)
    return order, tf.reduce_sum(tf.cast(share > DENSE_SHARE, tf.int32))


def _masked_top(scores, start: int, seen, seen_here, k):
    """Top-k of one chunk with the seen items set to -inf (a copy of the chunk's scores)."""
    rows = tf.broadcast_to(tf.range(tf.shape(seen)[0])[:, None], tf.shape(seen))
    where = tf.boolean_mask(tf.stack([rows, seen - start], -1), seen_here)
    masked = tf.tensor_scatter_nd_update(scores, where, tf.fill([tf.shape(where)[0]], NEG_INF))
    values, tokens = tf.math.top_k(masked, tf.minimum(k, tf.shape(masked)[1]))
    return values, tokens + start


def _gather_groups(layouts, groups):
    """(batch, n, GROUP): groups picked by their index in the chunk, from its blocks' layouts (one
    gather per block, of the picks that fall in it)."""
    if len(layouts) == 1:
        return tf.gather(layouts[0], groups, batch_dims=1)
    per_block = layouts[0].shape[1]
    batch, n = tf.shape(groups)[0], tf.shape(groups)[1]
    which = tf.reshape(groups // per_block, [-1])
    rows = tf.broadcast_to(tf.range(batch)[:, None], [batch, n])
    where = tf.reshape(tf.stack([rows, groups % per_block], -1), [-1, 2])
    slots = tf.dynamic_partition(tf.range(batch * n), which, len(layouts))
    picks = tf.dynamic_partition(where, which, len(layouts))
    values = tf.dynamic_stitch(slots, [tf.gather_nd(layout, pick) for layout, pick in zip(layouts, picks)])
    return tf.reshape(values, [batch, n, GROUP])


def _grouped_top(layouts, maxima, start: int, block_items: int, seen, need, k):
    """Top-k of one chunk from the `need` = k + (seen items in the chunk) best groups only: the
    k best unseen items lie within the k + s best items, which lie within the k + s groups with
    the best maxima. Those groups are gathered, their best items ranked, the seen ones dropped."""
    batch, per_block = tf.shape(maxima)[0], layouts[0].shape[1]
    _, best_groups = tf.math.top_k(maxima, need)
    best_groups = tf.sort(best_groups, axis=1)  # gathered in ascending token order: ties stay stable
    values = tf.reshape(_gather_groups(layouts, best_groups), [batch, need * GROUP])
    first = start + best_groups // per_block * block_items + best_groups % per_block * GROUP
    tokens = tf.reshape(first[:, :, None] + tf.range(GROUP), [batch, need * GROUP])
    values, position = tf.math.top_k(values, need)
    tokens = tf.gather(tokens, position, batch_dims=1)
    values = tf.where(_is_member(tokens, seen), NEG_INF, values)
    values, position = tf.math.top_k(values, k)
    return values, tf.gather(tokens, position, batch_dims=1)


def _chunk_top(scores, layouts, maxima, start: int, block_items: int, seen, k):
    """Exact top-k unseen tokens of one chunk (its blocks' scores): from a few groups when few
    items are seen there (a large catalogue), else by masking the chunk (a small catalogue, long
    histories)."""
    seen_here = (seen >= start) & (seen < start + sum(block.shape[1] for block in scores))
    need = k + tf.reduce_max(tf.reduce_sum(tf.cast(seen_here, tf.int32), 1))
    few = need * 4 <= tf.shape(maxima)[1]
    return tf.cond(few, lambda: _grouped_top(layouts, maxima, start, block_items, seen, need, k),
                   lambda: _masked_top(tf.concat(scores, 1), start, seen, seen_here, k))


def _marked_rivals(marked, marked_scores, width: int, target_scores):
    """(items to take off each row's count: seen items other than the target that reach it, and
    the target itself; sampled negatives that reach the target), from the marked tokens' scores
    [seen (width), target, negatives]."""
    seen, targets = marked[:, :width], marked[:, width:width + 1]
    rivals = (seen != targets) & (marked_scores[:, :width] >= target_scores)
    own = marked_scores[:, width] >= target_scores[:, 0]
    drawn = (marked_scores[:, width + 1:] >= target_scores) & (marked[:, width + 1:] >= FIRST_ITEM)  # PAD: none drawn
    return (tf.reduce_sum(tf.cast(rivals, tf.int32), 1) + tf.cast(own, tf.int32),
            tf.reduce_sum(tf.cast(drawn, tf.int32), 1))


class Recommender:
    """One compiled pass per batch: top-k tokens and scores, target ranks, user embeddings.

    The catalogue is scored block by block (the scorer's `chunk_items` items: one matmul whose
    scores are read right away for group maxima and the count); the top-k is taken per chunk of
    `chunk_blocks` blocks.
    """

    def __init__(self, scorer, with_rank: bool = True, chunk_blocks: int = CHUNK_BLOCKS, fused: bool = True):
        self.scorer = scorer
        self.num_tokens = scorer.num_tokens
        self.chunk_items = scorer.chunk_items
        self.chunk_blocks = chunk_blocks
        self.with_rank = with_rank
        # the ranked pass takes maxima and counts in one read where the fused kernel builds (never
        # the top-k-only pass, which the SavedModel exports: it stays plain TensorFlow)
        self.fused = with_rank and fused and kernel.group_scan_op() is not None
        self.run = tf.function(self._run, input_signature=SIGNATURE)

    def _scan_block(self, block_scores, target_scores, dense_rows):
        """(the block as groups, their maxima, each row's count of scores reaching its target's,
        dense_rows: how many leading rows TensorFlow's ops count item by item, set at the first block)."""
        layout = _groups(block_scores)
        if self.fused:
            maxima, counted = kernel.group_scan(tf.reshape(layout, [tf.shape(layout)[0], -1]), target_scores)
            return layout, maxima, counted, dense_rows
        maxima = tf.reduce_max(layout, 2)
        if not self.with_rank:
            return layout, maxima, None, dense_rows
        if dense_rows is None:  # the first block, rows as given: all compared unless few groups reach
            share = tf.reduce_mean(_reach_share(maxima, target_scores))
            dense_rows = tf.where(share < 0.25, 0, tf.shape(layout)[0])
        return layout, maxima, _count_at_least(layout, maxima, target_scores, dense_rows), dense_rows

    def _run(self, input_ids, seen, targets, negatives, k):
        """seen: token rows (any padding with PAD, repeats allowed); targets: PAD where none;
        negatives: (batch, n), n may be 0. Without the fused kernel, the rows are put in the order
        _dense_first gives after the first chunk (and back at the end)."""
        state, embedding = self.scorer.encode(input_ids)
        batch = tf.shape(input_ids)[0]
        seen = unique_sorted(tf.concat([seen, tf.broadcast_to(tf.constant([[PAD, MASK]]), [batch, 2])], 1))
        width, marked, marked_scores, target_scores = tf.shape(seen)[1], None, None, None
        if self.with_rank:
            marked = tf.concat([seen, targets[:, None], negatives], 1)  # tokens whose scores the scan picks up
            marked_scores = tf.fill(tf.shape(marked), NEG_INF)
            target_scores = self.scorer.at(state, targets)[:, None]
        best_scores, best_tokens = tf.fill([batch, k], NEG_INF), tf.zeros([batch, k], tf.int32)
        rank = sampled = tf.zeros([batch], tf.int32)
        order = dense_rows = None
        span = self.chunk_items * self.chunk_blocks
        for start in range(0, self.num_tokens, span):
            scores, layouts, maxima = [], [], []
            for block in range(start, min(start + span, self.num_tokens), self.chunk_items):
                block_scores = self.scorer.chunk(state, block, min(self.chunk_items, self.num_tokens - block))
                layout, block_maxima, counted, dense_rows = self._scan_block(block_scores, target_scores, dense_rows)
                if self.with_rank:
                    rank += counted
                    found, inside = _in_chunk(block_scores, marked, block, block_scores.shape[1])
                    marked_scores = tf.where(inside, found, marked_scores)
                scores.append(block_scores)
                layouts.append(layout)
                maxima.append(block_maxima)
            maxima = tf.concat(maxima, 1)
            values, tokens = _chunk_top(scores, layouts, maxima, start, self.chunk_items, seen, k)
            best_scores, best_tokens = _merge_top(best_scores, best_tokens, values, tokens, k)
            if self.with_rank and not self.fused and start == 0 and span < self.num_tokens:
                order, dense_rows = _dense_first(_reach_share(maxima, target_scores))
                state, seen, marked, marked_scores, target_scores, rank, best_scores, best_tokens = (
                    tf.gather(rows, order) for rows in (state, seen, marked, marked_scores, target_scores, rank,
                                                        best_scores, best_tokens))
        if self.with_rank:
            taken_off, sampled = _marked_rivals(marked, marked_scores, width, target_scores)
            rank -= taken_off
            lost = tf.math.is_nan(target_scores[:, 0])  # a diverged model: no comparison holds, so a miss
            rank = tf.where(lost, self.num_tokens, rank)
            sampled = tf.where(lost, tf.shape(negatives)[1], sampled)
        if order is not None:
            back = tf.math.invert_permutation(order)
            best_tokens, best_scores, rank, sampled = (tf.gather(rows, back) for rows in (best_tokens, best_scores,
                                                                                           rank, sampled))
        return {"tokens": best_tokens, "scores": best_scores, "rank": rank, "sampled_rank": sampled,
                "embedding": embedding}

    def __call__(self, input_ids, seen, targets=None, negatives=None, k: int = 10) -> dict[str, np.ndarray]:
        batch = len(input_ids)
        targets = np.zeros(batch, np.int32) if targets is None else targets
        negatives = np.zeros((batch, 0), np.int32) if negatives is None else negatives
        out = self.run(input_ids, seen, targets, negatives, tf.constant(min(k, self.num_tokens - FIRST_ITEM)))
        return {name: value.numpy() for name, value in out.items()}


def scoring_floor(items: int, hidden: int, batch: int, repeats: int = 3) -> float:
    """Users/s of the catalogue's block matmuls alone, each block's scores read once (a max per
    row), shaped as the test and inference stages score (ModelScorer: blocks of
    CHUNK_ITEMS items, hidden + 1 rows with the bias). No exact scorer that computes every score
    through TensorFlow's matmul goes faster on this machine, so the stages' users/s read against it."""
    blocks = -(-items // CHUNK_ITEMS)
    rng = np.random.default_rng(0)
    table = tf.Variable(rng.normal(0, 0.1, (blocks, hidden + 1, CHUNK_ITEMS)).astype(np.float32))
    state = tf.constant(rng.normal(0, 1, (batch, hidden + 1)).astype(np.float32))

    @tf.function
    def one_pass(state):
        best = tf.fill([batch], float("-inf"))
        for block in range(blocks):
            best = tf.maximum(best, tf.reduce_max(tf.matmul(state, table[block]), 1))
        return best

    one_pass(state).numpy()  # traced and warmed up
    started = time.perf_counter()
    for _ in range(repeats):
        one_pass(state).numpy()
    return round(batch * repeats / (time.perf_counter() - started), 1)


def history_popularity(manifest: Manifest, split: str) -> np.ndarray:
    """Most-popular scores from the split's own input histories (no held-out item leaks in)."""
    counts = np.zeros(manifest.num_tokens, dtype=np.float64)
    for chunk in inputs.first_histories(manifest, split):
        counts += np.bincount(chunk.history, minlength=len(counts))
    return metrics.popularity_scores(counts[FIRST_ITEM:], manifest.num_tokens)


@dataclass
class Sampling:
    """The paper's extra protocol: rank among `count` popularity-drawn negatives (0 = off)."""

    count: int = 0
    popularity: np.ndarray | None = None
    seed: int = 0


def score_batches(recommenders: dict[str, Recommender], batches, num_tokens: int,
                  sampling: Sampling = Sampling(), bar=None) -> dict[str, metrics.Evaluation]:
    """Ranks and top-10 lists of one or more recommenders on the same batches."""
    results = {name: metrics.Evaluation(num_tokens) for name in recommenders}
    rng = np.random.default_rng(sampling.seed)
    for batch in batches:
        negatives = None
        if sampling.count:
            negatives = metrics.sample_negatives(sampling.popularity, batch.target, batch.history, sampling.count, rng)
        for name, recommender in recommenders.items():
            out = recommender(batch.input_ids, batch.history, batch.target, negatives, 10)
            results[name].add(batch.user_index, batch.target, out["rank"], out["tokens"], out["scores"],
                              out["sampled_rank"] if sampling.count else None)
        if bar is not None:
            bar.update()
    return results


def evaluate(recommenders: dict[str, Recommender], manifest: Manifest, split: str, batch_size: int,
             sampling: Sampling = Sampling(), worker: Worker = Worker()) -> dict[str, metrics.Evaluation]:
    """Full-ranking evaluation of one or more recommenders on every user of a split (of this
    worker's shards when several workers split it: their evaluations merge exactly)."""
    if manifest.split(split).examples == 0:
        raise UserError(f"{manifest.path}: the '{split}' split is empty; nothing to evaluate")
    total = inputs.eval_batch_count(manifest.split(split).examples // worker.count, batch_size)
    with progress(desc=f"{split}: scoring", unit=" batches", total=total) as bar:
        batches = inputs.prefetched(inputs.eval_batches(manifest, split, batch_size, worker=worker.index,
                                                        workers=worker.count))
        return score_batches(recommenders, batches, manifest.num_tokens, sampling, bar)


@dataclass
class Predictions:
    """Top-k and embeddings of one chunk of users, in user order."""

    user_index: np.ndarray
    tokens: np.ndarray  # (users, k); entries past the candidates have score -inf
    scores: np.ndarray
    embeddings: np.ndarray


def predict(recommender: Recommender, manifest: Manifest, split: str, batch_size: int, k: int,
            worker: Worker = Worker()):
    """Per chunk of users (in user order; this worker's shards when several split the work):
    top-k tokens and scores, and user embeddings."""
    total = inputs.eval_batch_count(manifest.split(split).examples // worker.count, batch_size)
    bar = progress(desc=f"{split}: top-{k}", unit=" batches", total=total)
    chunks = inputs.eval_chunks(manifest, split, worker=worker.index, workers=worker.count)
    batched = ((chunk, list(inputs.chunk_batches(chunk, batch_size, manifest.max_seq_length))) for chunk in chunks)
    for chunk, batches in inputs.prefetched(batched, depth=1):
        parts = []
        for batch in batches:
            parts.append((batch.rows, recommender(batch.input_ids, batch.history, k=k)))
            bar.update()
        rows = np.concatenate([r for r, _ in parts])
        order = np.empty_like(rows)
        order[rows] = np.arange(len(rows))
        gathered = {name: np.concatenate([out[name] for _, out in parts])[order]
                    for name in ("tokens", "scores", "embedding")}
        yield Predictions(chunk.user_index, gathered["tokens"], gathered["scores"], gathered["embedding"])
    bar.close()


class Validation:
    """Validation metrics of the model being trained.

    During training: a fixed, seeded sample of `users` users (all of them when the split holds no
    more), read once and kept in memory, so validating a million-user log every few hundred steps
    stays cheap. `full()`: every user of the split, streamed, once at the end.
    """

    def __init__(self, manifest: Manifest, batch_size: int, users: int | None, seed: int):
        self.manifest, self.batch_size = manifest, batch_size
        valid = manifest.split("valid")
        self.total = valid.examples if valid.users is None else valid.users  # older manifests: one per user
        if self.total == 0:
            raise UserError(f"{manifest.path}: the 'valid' split is empty; nothing to validate on")
        self.users, self.seed = min(users or self.total, self.total), seed
        self.batches: list[inputs.EvalBatch] | None = None
        self.recommender: Recommender | None = None

    @property
    def label(self) -> str:
        if self.users == self.total:
            return f"all {self.total:,} users"
        return f"a seeded sample of {self.users:,} of {self.total:,} users"

    def _recommender(self, model) -> Recommender:
        if self.recommender is None:
            self.recommender = Recommender(ModelScorer(model))
        else:
            self.recommender.scorer.refresh()  # the weights have changed since the last validation
        return self.recommender

    def __call__(self, model) -> dict[str, float]:
        if self.batches is None:
            rows = inputs.sample_rows(self.manifest, "valid", self.users, self.seed)
            self.batches = list(inputs.chunk_batches(rows, self.batch_size, self.manifest.max_seq_length))
        result = score_batches({"model": self._recommender(model)}, self.batches, self.manifest.num_tokens)
        return result["model"].result()

    def full(self, model) -> dict[str, float]:
        return evaluate({"model": self._recommender(model)}, self.manifest, "valid", self.batch_size)["model"].result()
