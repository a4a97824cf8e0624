"""Warm start: a new model begins from a trained one (train_val.init_from).

Weights are copied by variable name. The architecture must be the same (a mismatch stops with
the key named). The two rows-per-token weights, the item embedding table (tied to the output
layer) and the output bias, are reconciled by original item id: items both vocabularies know
keep their trained rows, items gone from the new data are dropped, and items the parent never
saw get fresh rows: `random` (default) = this model's own random initialisation (small
embedding, bias 0), as training from scratch would give them; `mean` = the parent's average
item embedding and average output bias plus that random initialisation (an "average item").
On ML-100K `mean` ranked worse before training (the new items crowd the top of every list) and
no better after it (README, "Fine-tuning a trained model").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bert4rec.data.records import FIRST_ITEM
from bert4rec.errors import UserError
from bert4rec.model import store
from bert4rec.params import ModelParams

# The keys that shape the weights; dropout and initializer_range may differ.
ARCHITECTURE = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings", "hidden_act", "layer_norm", "block")
PER_TOKEN = ("item_embedding/embeddings", "output_bias")


def variable_name(variable) -> str:
    """A variable's path without the model's own name: block_0/attention/qkv/kernel, ..."""
    return variable.path.split("/", 1)[1]


@dataclass
class Parent:
    """A trained model read back for warm starting: weights by name, vocabulary by item id."""

    folder: Path
    info: store.ModelInfo
    weights: dict[str, np.ndarray]
    item_ids: pa.Array


def load_parent(folder: Path, source: str) -> Parent:
    """models/<name>/ of a trained model: its architecture, its weights by name, its vocabulary."""
    if not (folder / store.WEIGHTS).exists():
        raise UserError(f"{folder / store.WEIGHTS}: train_val.init_from '{source}' is not a trained model "
                        "(expected models/<name>/ with weights.npz, model.json and items.parquet)")
    model, info = store.load_model(folder)
    return Parent(folder, info, {variable_name(v): v.numpy() for v in model.weights}, store.item_ids(folder))


def check_architecture(parent: Parent, wanted: ModelParams, source: str) -> None:
    """One line naming every architecture key that differs from the parent's."""
    saved = parent.info.model
    differ = [f"train_val.model.{key} is {getattr(wanted, key)!r} but {getattr(saved, key)!r} in the parent"
              for key in ARCHITECTURE if getattr(wanted, key) != getattr(saved, key)]
    if differ:
        raise UserError(f"{parent.folder / store.INFO}: cannot warm start from train_val.init_from '{source}': "
                        + "; ".join(differ) + " (set them to the parent's values)")


@dataclass
class Reconciliation:
    """How the parent's token rows map onto this vocabulary."""

    parent_tokens: np.ndarray  # the shared items' tokens in the parent ...
    tokens: np.ndarray  # ... and here
    new_tokens: np.ndarray  # tokens here of items the parent never saw
    dropped: int  # parent items not in this vocabulary


def reconcile(parent_ids: pa.Array, item_ids: pa.Array) -> Reconciliation:
    """Match items by original id (integer ids against string ids compare as text)."""
    if parent_ids.type != item_ids.type:
        parent_ids, item_ids = pc.cast(parent_ids, pa.string()), pc.cast(item_ids, pa.string())
    found = pc.index_in(item_ids, value_set=parent_ids).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    shared = found >= 0
    return Reconciliation(found[shared] + FIRST_ITEM, np.flatnonzero(shared) + FIRST_ITEM,
                          np.flatnonzero(~shared) + FIRST_ITEM, len(parent_ids) - int(shared.sum()))


def _rows(fresh: np.ndarray, trained: np.ndarray, match: Reconciliation, new_item_init: str) -> np.ndarray:
    """This model's rows: special tokens and shared items from the parent, new items fresh."""
    out = fresh.copy()
    out[:FIRST_ITEM] = trained[:FIRST_ITEM]
    out[match.tokens] = trained[match.parent_tokens]
    if new_item_init == "mean" and len(match.new_tokens):
        out[match.new_tokens] = trained[FIRST_ITEM:].mean(axis=0) + fresh[match.new_tokens]
    return out


def warm_start(model, parent: Parent, match: Reconciliation, new_item_init: str) -> None:
    """Copy the parent's weights into `model` by name, per-token rows as `match` maps them."""
    for variable in model.weights:
        name = variable_name(variable)
        if name not in parent.weights:
            raise UserError(f"{parent.folder / store.WEIGHTS}: the parent model has no weight '{name}'")
        value = parent.weights[name]
        if name in PER_TOKEN:
            value = _rows(np.asarray(variable.numpy()), value, match, new_item_init)
        if tuple(value.shape) != tuple(variable.shape):
            raise UserError(f"{parent.folder / store.WEIGHTS}: weight '{name}' has shape {tuple(value.shape)}, "
                            f"this model's is {tuple(variable.shape)}")
        variable.assign(value.astype(np.float32))
