import keras
import numpy as np
import pytest
import tensorflow as tf

from bert4rec.params import ModelParams
from bert4rec.model import loss as objectives
from bert4rec.model.loss import masked_item_loss, sampling_log_q
from bert4rec.model.network import build_model
from bert4rec.data.records import FIRST_ITEM, MASK, PAD

PARAMS = ModelParams(hidden_size=16, num_attention_heads=2, intermediate_size=32, max_position_embeddings=12,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
NUM_TOKENS = 2 + 30


BLOCKS = [{"layer_norm": "post"}, {"layer_norm": "pre"}, {"block": "ligr"}]


@pytest.fixture(scope="module", params=BLOCKS, ids=["post", "pre", "ligr"])
def model(request):
    keras.utils.set_random_seed(0)
    return build_model(NUM_TOKENS, PARAMS.model_copy(update=request.param))


def test_last_only_encoding_equals_the_full_encoding_at_the_last_position(model):
    ids, _, _ = batch()
    full = model.encode(ids).numpy()[:, -1]
    last = model.encode(ids, last_only=True).numpy()[:, -1]
    np.testing.assert_allclose(full, last, rtol=1e-5, atol=1e-5)


def batch(seed=0, width=12, predictions=3):
    rng = np.random.default_rng(seed)
    ids = rng.integers(FIRST_ITEM, NUM_TOKENS, size=(4, width)).astype(np.int32)
    ids[0, :5] = PAD
    positions = np.sort(rng.choice(np.arange(6, width), size=(4, predictions)), axis=1).astype(np.int32)
    labels = ids[np.arange(4)[:, None], positions].copy()
    labels[1, -1] = PAD  # an unused slot
    ids[np.arange(4)[:, None], positions] = MASK
    return tf.constant(ids), tf.constant(positions), tf.constant(labels)


def test_scores_every_token_with_tied_embeddings(model):
    ids, _, _ = batch()
    scores = model(ids).numpy()
    assert scores.shape == (4, NUM_TOKENS)
    hidden = model.transform(model.encode(ids)[:, -1]).numpy()
    table = model.item_embedding.embeddings.numpy()
    expected = hidden @ table.T + model.output_bias.numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)


def test_left_padding_can_be_cut_without_changing_the_output(model):
    """Positions count from the right, so dropping all-PAD columns (length buckets) is exact."""
    ids, _, _ = batch()
    short = ids.numpy().copy()
    short[:, :4] = PAD
    full = model(tf.constant(short)).numpy()
    cut = model(tf.constant(short[:, 4:])).numpy()
    np.testing.assert_allclose(full, cut, rtol=1e-5, atol=1e-5)


def test_full_softmax_loss_is_mean_over_used_slots_only(model):
    ids, positions, labels = batch()
    loss = float(masked_item_loss(model, ids, positions, labels, training=False))
    hidden = model.encode(ids).numpy()
    gathered = np.take_along_axis(hidden, positions.numpy()[..., None], axis=1)
    logits = model.logits(model.transform(gathered)).numpy()[..., FIRST_ITEM:]
    logits -= logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    used = labels.numpy() != PAD
    picked = np.take_along_axis(log_probs, np.maximum(labels.numpy() - FIRST_ITEM, 0)[..., None], -1)[..., 0]
    assert loss == pytest.approx(-picked[used].mean(), rel=1e-4)


def test_sampled_softmax_with_every_item_and_uniform_q_equals_full_softmax(model):
    ids, positions, labels = batch()
    log_q = tf.constant(sampling_log_q(np.ones(NUM_TOKENS - FIRST_ITEM), NUM_TOKENS, "uniform"))
    negatives = tf.range(FIRST_ITEM, NUM_TOKENS)
    full = float(masked_item_loss(model, ids, positions, labels, training=False))
    sampled = float(masked_item_loss(model, ids, positions, labels, "sampled_softmax", negatives, log_q, training=False))
    assert sampled == pytest.approx(full, rel=1e-4)


def test_popularity_sampler_gives_specials_no_mass():
    log_q = sampling_log_q(np.array([3, 1]), 4, "popularity")
    probability = np.exp(log_q)
    assert probability[:FIRST_ITEM].max() < 1e-30
    np.testing.assert_allclose(probability[FIRST_ITEM:], [0.75, 0.25], rtol=1e-6)


@pytest.mark.parametrize("block", ["transformer", "ligr"])
def test_the_causal_encoder_hides_later_items(block):
    keras.utils.set_random_seed(0)
    causal = build_model(NUM_TOKENS, PARAMS.model_copy(update={"block": block}), causal=True)
    ids, _, _ = batch()
    changed = ids.numpy().copy()
    changed[:, 8] = (changed[:, 8] + 1 - FIRST_ITEM) % (NUM_TOKENS - FIRST_ITEM) + FIRST_ITEM
    before, after = causal.encode(ids).numpy(), causal.encode(tf.constant(changed)).numpy()
    real = ids.numpy()[:, :8] != PAD  # (padding positions' outputs are never read)
    np.testing.assert_array_equal(before[:, :8][real], after[:, :8][real])  # earlier items cannot see position 8
    assert not np.allclose(before[:, 8:], after[:, 8:])
    last = causal.encode(ids, last_only=True).numpy()[:, -1]
    np.testing.assert_allclose(before[:, -1], last, rtol=1e-5, atol=1e-5)


def test_causal_loss_is_next_item_cross_entropy_over_real_positions():
    from bert4rec.model.loss import causal_item_loss

    keras.utils.set_random_seed(0)
    causal = build_model(NUM_TOKENS, PARAMS, causal=True)
    windows, _, _ = batch()
    windows = windows.numpy()
    windows[windows == MASK] = FIRST_ITEM
    loss = float(causal_item_loss(causal, tf.constant(windows), training=False))
    inputs, labels = windows[:, :-1], windows[:, 1:]
    logits = causal.logits(causal.transform(causal.encode(tf.constant(inputs)))).numpy()[..., FIRST_ITEM:]
    logits -= logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    used = (inputs != PAD) & (labels != PAD)
    picked = np.take_along_axis(log_probs, (labels - FIRST_ITEM).clip(0)[..., None], -1)[..., 0]
    assert loss == pytest.approx(-picked[used].mean(), rel=1e-4)


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
def test_chunked_full_softmax_matches_one_softmax_over_all_rows_with_its_gradients(monkeypatch, dtype):
    rng = np.random.default_rng(0)
    rows, tokens, hidden = 23, 11, 5
    transformed = tf.constant(rng.normal(size=(rows, hidden)), dtype)
    table = tf.constant(rng.normal(size=(tokens, hidden)), tf.float32)
    bias = tf.constant(rng.normal(size=tokens), tf.float32)
    labels = tf.constant(rng.integers(0, tokens, rows), tf.int32)

    def reference(transformed, table, bias):
        logits = tf.cast(tf.matmul(transformed, tf.cast(table, dtype), transpose_b=True), tf.float32) + bias
        return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))

    def chunked(transformed, table, bias):
        return objectives.full_softmax_cross_entropy(transformed, table, bias, labels)

    monkeypatch.setattr(objectives, "LOGITS_PER_CHUNK", 4 * tokens + 3)  # chunks of 4 rows, the last one of 3
    monkeypatch.setattr(objectives, "MIN_CHUNK_ROWS", 2)
    assert objectives.chunk_rows(tokens) == 4
    for run in (lambda f: f, tf.function):
        results = []
        for function in (reference, chunked):
            with tf.GradientTape() as tape:
                tape.watch([transformed, table, bias])
                value = 0.5 * run(function)(transformed, table, bias)
            results.append([value, *tape.gradient(value, [transformed, table, bias])])
        tolerance = 1e-5 if dtype == tf.float32 else 2e-2
        for expected, got in zip(*results):
            np.testing.assert_allclose(tf.cast(got, tf.float32), tf.cast(expected, tf.float32), rtol=tolerance,
                                       atol=tolerance)


def test_softmax_cross_entropy_equals_tensorflows_kernel_on_extreme_logits():
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=300.0, size=(7, 9)).astype(np.float32)  # exp() of these overflows unshifted
    logits[:, :2] = -1e9  # PAD and MASK as the full softmax passes them
    labels = rng.integers(2, 9, 7).astype(np.int32)
    losses, grad = objectives.softmax_cross_entropy(tf.constant(logits), tf.constant(labels))
    expected = tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits(features=logits, labels=labels)
    np.testing.assert_allclose(losses, expected[0], rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(grad, expected[1], rtol=1e-6, atol=1e-6)
    assert np.all(np.isfinite(losses)) and np.all(np.isfinite(grad))


def test_full_softmax_of_no_rows_is_zero_with_zero_gradients():
    table, bias = tf.ones([5, 3]), tf.zeros([5])
    rows, labels = tf.zeros([0, 3]), tf.zeros([0], tf.int32)
    for run in (lambda f: f, tf.function):
        with tf.GradientTape() as tape:
            tape.watch([rows, table, bias])
            value = run(lambda r, t, b: objectives.full_softmax_cross_entropy(r, t, b, labels))(rows, table, bias)
        grads = tape.gradient(value, [rows, table, bias])
        assert float(value) == 0.0 and grads[0].shape == (0, 3)
        assert not np.any(grads[1].numpy()) and not np.any(grads[2].numpy())


def test_ligr_blocks_gate_both_residuals_and_feed_forward_with_swiglu():
    keras.utils.set_random_seed(0)
    ligr = build_model(NUM_TOKENS, PARAMS.model_copy(update={"block": "ligr"}))
    block = ligr.blocks[0]
    shapes = {variable.path.split("/", 2)[-1]: tuple(variable.shape) for variable in block.weights}
    hidden, inner = PARAMS.hidden_size, PARAMS.intermediate_size
    assert shapes["inner/kernel"] == (hidden, 2 * inner) and shapes["outer/kernel"] == (inner, hidden)
    assert shapes["attention_gate/kernel"] == shapes["output_gate/kernel"] == (hidden, hidden)
    x = tf.constant(np.random.default_rng(1).normal(size=(2, 5, hidden)), tf.float32)
    bias = tf.zeros((2, 1, 1, 5))
    attended = x + block.attention_gate(x) * block.attention(block.attention_norm(x), bias)
    normed = block.output_norm(attended)
    gate, value = np.split(block.inner(normed).numpy(), 2, axis=-1)
    swiglu = gate / (1 + np.exp(-gate)) * value
    fed = swiglu @ block.outer.kernel.numpy() + block.outer.bias.numpy()
    expected = attended.numpy() + block.output_gate(attended).numpy() * fed
    np.testing.assert_allclose(block(x, bias).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_ligr_needs_pre_norm():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="needs layer_norm 'pre'"):
        ModelParams(block="ligr", layer_norm="post")


def test_an_empty_history_scores_the_same_whatever_its_batch():
    """A causal model reads an empty history (the trailing [MASK] dropped) as PAD alone: its scores
    must not depend on the batch's width or on the other rows."""
    from bert4rec.model.recommend import ModelScorer

    keras.utils.set_random_seed(0)
    scorer = ModelScorer(build_model(NUM_TOKENS, PARAMS, causal=True))
    alone, _ = scorer.encode(tf.constant([[MASK]]))
    beside_a_short, _ = scorer.encode(tf.constant([[PAD, PAD, MASK], [PAD, 5, MASK]]))
    beside_a_long, _ = scorer.encode(tf.constant([[PAD] * 9 + [MASK], [3, 4, 5, 6, 7, 8, 9, 10, 11, MASK]]))
    np.testing.assert_allclose(beside_a_short.numpy()[0], alone.numpy()[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(beside_a_long.numpy()[0], alone.numpy()[0], rtol=1e-5, atol=1e-6)
    known, _ = scorer.encode(tf.constant([[PAD] * 8 + [5, MASK]]))
    np.testing.assert_allclose(beside_a_short.numpy()[1], known.numpy()[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("causal", [True, False])
def test_mixed_float16_keeps_left_padded_rows_finite(causal):
    """-1e9 is -inf in float16: a padding row of the causal mask, every key hidden, was a softmax
    of -inf alone (NaN), which then reached every position through the next layer."""
    from bert4rec.model.loss import causal_item_loss

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        model = build_model(NUM_TOKENS, PARAMS, causal=causal)
        ids = tf.constant([[PAD, PAD, PAD, 5, 6, 7], [3, 4, 5, 6, 7, 8]])
        assert np.isfinite(model.encode(ids).numpy()).all()
        if causal:
            assert np.isfinite(float(causal_item_loss(model, ids, training=False)))
    finally:
        keras.mixed_precision.set_global_policy("float32")
