"""What lives in models/<model_name>/ and how it is checked when reused.

model.json (ModelInfo) records the architecture, the vocabulary's sha256 and the training
summary; config.yaml is the full resolved params; items.parquet a copy of the vocabulary the
model was trained with; weights.npz the final (best) weights. Weights and checkpoints are plain
.npz archives (no pickle), written atomically. A model is refused, with the file named, when its
vocabulary or architecture differs from the data or params at hand.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, field_validator

from bert4rec.data.manifest import Manifest
from bert4rec.data.records import FIRST_ITEM
from bert4rec.errors import UserError
from bert4rec.fileio import atomic_file, read_typed, write_typed
from bert4rec.model.network import build_model
from bert4rec.params import ModelParams, Objective, Params, TrainValParams, dump_params

CHECKPOINT = re.compile(r"^ckpt-(\d+)\.npz$")
# train_val keys a run may change and still continue an interrupted or finished run's checkpoints
RESUMABLE = {"num_train_steps", "training_time_limit_seconds", "early_stopping_patience", "eval_every_steps",
             "validation_users", "eval_batch_size", "log_every_steps", "save_checkpoints_steps", "keep_checkpoints",
             "model_name", "distribution"}
INFO = "model.json"
WEIGHTS = "weights.npz"


class ParentModel(BaseModel):
    """The trained model a fine-tuned one started from (train_val.init_from): its lineage."""

    model_config = ConfigDict(extra="forbid")

    source: str  # train_val.init_from as given: a models/<name> folder or an MLflow model URI
    model_name: str
    run_id: str | None = None  # the parent's MLflow train_val run, when it was tracked
    vocabulary_sha256: str
    shared_items: int  # items of both vocabularies: trained embedding and output bias kept
    new_items: int  # items the parent never saw: fresh rows (train_val.new_item_init)
    dropped_items: int  # parent items absent from this vocabulary
    new_item_init: str


class PhaseRecord(BaseModel):
    """One finished phase of a fine-tuning schedule (train_val.finetune_schedule)."""

    model_config = ConfigDict(extra="forbid")

    phase: int  # 1-based, the `phase` column of the training curves
    train: list[str]
    learning_rate: float
    start_step: int
    end_step: int
    stopped_early: bool
    best_valid_ndcg_at_10: float  # best validation NDCG@10 seen during the phase (-1: none)
    seconds: float  # training seconds (the trainer's clock: wall time, across resumes)


class ModelInfo(BaseModel):
    """models/<name>/model.json."""

    model_config = ConfigDict(extra="forbid")

    model_name: str
    num_tokens: int
    max_seq_length: int
    objective: Objective = "masked"
    model: ModelParams
    vocabulary_sha256: str
    trained_steps: int = 0
    replicas: int = 1
    best_step: int = -1
    stopped_early: bool = False
    valid: dict[str, float] | None = None
    training_sequences_per_second: float = 0.0
    training_seconds: float = 0.0
    mlflow_run_id: str | None = None  # the train_val run that trained it (None: tracking off)
    parent: ParentModel | None = None  # set when fine-tuned from another model
    phases: list[PhaseRecord] | None = None  # set when trained by a fine-tuning schedule

    @field_validator("model", mode="before")
    @classmethod
    def _blocks_before_the_key(cls, model):
        """A model.json written before `block` existed describes transformer blocks, whatever
        today's default is."""
        return {"block": "transformer", **model} if isinstance(model, dict) else model


def training_fingerprint(params: TrainValParams, manifest: Manifest) -> str:
    """What a checkpoint may be resumed under: the same records (the manifest names every shard's
    sha256), the same training params (but RESUMABLE ones) and the same model code."""
    digest = hashlib.sha256(manifest.path.read_bytes())
    digest.update(params.model_dump_json(exclude=RESUMABLE).encode())
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def read_info(folder: Path) -> ModelInfo:
    return read_typed(folder / INFO, ModelInfo, "model description")


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


def load_arrays(path: Path, what: str) -> dict[str, np.ndarray]:
    if not path.exists():
        raise UserError(f"{path}: {what} not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise UserError(f"{path}: {what} is corrupt or unreadable ({error})") from None


def weights_to_arrays(weights: list[np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}{i:04d}": np.asarray(w) for i, w in enumerate(weights)}


def arrays_to_weights(arrays: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    return [arrays[key] for key in sorted(k for k in arrays if k.startswith(prefix))]


def set_model_weights(model, weights: list[np.ndarray], source: Path) -> None:
    shapes = [tuple(v.shape) for v in model.weights]
    if [tuple(w.shape) for w in weights] != shapes:
        raise UserError(f"{source}: weights do not fit this model's architecture (train_val.model params changed?)")
    model.set_weights(weights)


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    if not folder.exists():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT.match(p.name))]
    return sorted(found)


def prune_checkpoints(folder: Path, keep: int) -> None:
    for _, path in checkpoints(folder)[:-keep]:
        path.unlink(missing_ok=True)


def write_model_files(folder: Path, params: Params, info: ModelInfo, vocabulary: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(folder / "config.yaml") as tmp:
        tmp.write_text(dump_params(params))
    if not (folder / "items.parquet").exists():
        with atomic_file(folder / "items.parquet") as tmp:
            shutil.copyfile(vocabulary, tmp)
    write_typed(folder / INFO, info)


def check_compatible(folder: Path, info: ModelInfo, manifest: Manifest, model: ModelParams | None = None,
                     objective: str | None = None,
                     remedy: str = "rerun train_val, set train_val.model_name to a new name, or restore the params") -> None:
    """Refuse a model whose vocabulary or architecture differs from the data/params at hand."""
    if info.vocabulary_sha256 != manifest.vocabulary.sha256:
        raise UserError(
            f"{folder / 'items.parquet'}: model '{folder.name}' was trained with another item vocabulary "
            f"(sha256 {info.vocabulary_sha256[:12]} vs the data's {manifest.vocabulary.sha256[:12]}); "
            "retrain or use a matching model"
        )
    if info.num_tokens != manifest.num_tokens:
        raise UserError(f"{folder / INFO}: num_tokens {info.num_tokens} != data's {manifest.num_tokens}")
    if info.max_seq_length != manifest.max_seq_length:
        raise UserError(f"{folder / INFO}: model max_seq_length {info.max_seq_length} differs from "
                        f"tfrecord.max_seq_length {manifest.max_seq_length}")
    if objective is not None and objective != info.objective:
        raise UserError(f"{folder / INFO}: params contradict the saved model '{folder.name}' (train_val.objective: "
                        f"saved {info.objective!r}, params {objective!r}); {remedy}")
    if model is not None:
        saved, wanted = info.model.model_dump(mode="json"), model.model_dump(mode="json")
        changed = [f"train_val.model.{k}: saved {saved.get(k)!r}, params {v!r}" for k, v in wanted.items() if saved.get(k) != v]
        if changed:
            raise UserError(
                f"{folder / INFO}: params contradict the saved model '{folder.name}' ("
                + "; ".join(changed) + f"); {remedy}"
            )


def require_trained(folder: Path) -> None:
    if not (folder / WEIGHTS).exists():
        raise UserError(f"{folder / WEIGHTS}: no trained model '{folder.name}'; run the train_val stage first")


def load_model(folder: Path, manifest: Manifest | None = None, params: TrainValParams | None = None):
    """Rebuild a trained model from model.json + weights.npz (checked against the data's
    vocabulary and, given params, against the architecture and objective they ask for)."""
    require_trained(folder)
    info = read_info(folder)
    if manifest is not None:
        check_compatible(folder, info, manifest, params.model if params else None, params.objective if params else None)
    model = build_model(info.num_tokens, info.model, causal=info.objective == "causal")
    weights = arrays_to_weights(load_arrays(folder / WEIGHTS, "model weights"), "model/")
    set_model_weights(model, weights, folder / WEIGHTS)
    return model, info


def item_ids(folder: Path) -> pa.Array:
    """Original item ids in token order (token = index + 2), from the model's own vocabulary copy."""
    path = folder / "items.parquet"
    if not path.exists():
        raise UserError(f"{path}: the model's vocabulary copy is missing; retrain the model")
    try:
        ids = pq.read_table(path, columns=["item_id"]).column("item_id").combine_chunks()
    except (pa.ArrowException, OSError, KeyError) as error:
        raise UserError(f"{path}: not the model's readable vocabulary copy ({' '.join(str(error).split())[:160]}); "
                        "restore the file or retrain the model") from None
    expected = read_info(folder).num_tokens - FIRST_ITEM
    if len(ids) != expected:
        raise UserError(f"{path}: {len(ids)} items, but model '{folder.name}' has {expected}; the file is not this "
                        "model's vocabulary (restore it or retrain the model)")
    return ids
