"""Warm start: weights by name, vocabulary reconciled by item id, architecture checked."""

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bert4rec.data.records import FIRST_ITEM
from bert4rec.errors import UserError
from bert4rec.model import store, warmstart
from bert4rec.model.network import build_model
from bert4rec.params import ModelParams

PARAMS = ModelParams(hidden_size=16, num_attention_heads=2, intermediate_size=32, max_position_embeddings=12)
PARENT_ITEMS = [10, 11, 12, 13, 14, 15]  # token = position + 2


def save_parent(folder, params=PARAMS, items=PARENT_ITEMS):
    keras.utils.set_random_seed(1)
    model = build_model(len(items) + FIRST_ITEM, params)
    for variable in model.weights:  # trained-looking values, far from a fresh initialisation
        variable.assign(np.random.default_rng(len(variable.path)).normal(0, 1, variable.shape).astype(np.float32))
    store.save_arrays(folder / store.WEIGHTS, store.weights_to_arrays(model.get_weights(), "model/"))
    info = store.ModelInfo(model_name="parent", num_tokens=len(items) + FIRST_ITEM, max_seq_length=12, model=params,
                           vocabulary_sha256="0" * 64)
    (folder / store.INFO).write_text(info.model_dump_json())
    pq.write_table(pa.table({"token": np.arange(len(items)) + FIRST_ITEM, "item_id": items}), folder / "items.parquet")
    return model


def rows(model, name):
    return next(v for v in model.weights if warmstart.variable_name(v) == name).numpy()


@pytest.mark.parametrize("new_item_init", ["mean", "random"])
def test_kept_items_keep_their_rows_new_ones_are_fresh_gone_ones_dropped(tmp_path, new_item_init):
    parent_model = save_parent(tmp_path)
    parent = warmstart.load_parent(tmp_path, "models/parent")
    child_items = pa.array(["13", "99", "10", "98", "15"])  # as strings: ids match by text; 11, 12, 14 gone
    keras.utils.set_random_seed(2)
    child = build_model(len(child_items) + FIRST_ITEM, PARAMS)
    fresh = {name: rows(child, name) for name in warmstart.PER_TOKEN}
    match = warmstart.reconcile(parent.item_ids, child_items)
    warmstart.warm_start(child, parent, match, new_item_init)
    assert (match.tokens.tolist(), match.parent_tokens.tolist(), match.new_tokens.tolist(), match.dropped) == \
        ([2, 4, 6], [5, 2, 7], [3, 5], 3)
    for name in warmstart.PER_TOKEN:
        trained, got = rows(parent_model, name), rows(child, name)
        np.testing.assert_array_equal(got[[2, 4, 6]], trained[[5, 2, 7]])  # 13, 10, 15: identical rows
        np.testing.assert_array_equal(got[:FIRST_ITEM], trained[:FIRST_ITEM])  # PAD, MASK
        offset = trained[FIRST_ITEM:].mean(axis=0) if new_item_init == "mean" else 0.0
        np.testing.assert_allclose(got[[3, 5]], offset + fresh[name][[3, 5]], rtol=1e-6)
    for variable in child.weights:  # everything else copied by name
        name = warmstart.variable_name(variable)
        if name not in warmstart.PER_TOKEN:
            np.testing.assert_array_equal(variable.numpy(), rows(parent_model, name))


def test_a_different_architecture_stops_with_the_keys_named(tmp_path):
    save_parent(tmp_path)
    parent = warmstart.load_parent(tmp_path, "models/parent")
    wanted = PARAMS.model_copy(update={"hidden_size": 32, "num_hidden_layers": 3, "hidden_dropout_prob": 0.3})
    with pytest.raises(UserError) as error:
        warmstart.check_architecture(parent, wanted, "models/parent")
    message = str(error.value)
    assert "train_val.model.hidden_size is 32 but 16 in the parent" in message
    assert "train_val.model.num_hidden_layers is 3 but 2" in message and "dropout" not in message
    assert "\n" not in message and str(tmp_path / store.INFO) in message
    warmstart.check_architecture(parent, PARAMS.model_copy(update={"hidden_dropout_prob": 0.3}), "models/parent")


def test_not_a_trained_model(tmp_path):
    with pytest.raises(UserError, match="train_val.init_from 'elsewhere' is not a trained model"):
        warmstart.load_parent(tmp_path, "elsewhere")
