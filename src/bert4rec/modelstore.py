"""What lives in models/<model_name>/ and how it is checked when reused.

model.json records the architecture, the vocabulary's sha256 and the training state summary;
config.yaml is the full resolved params; items.parquet is a copy of the vocabulary the model
was trained with; weights.npz the final (best) weights; checkpoints/ the resumable states.
A model is refused, with the file named, when its vocabulary or architecture differs.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path

import numpy as np

from bert4rec.config import ModelParams, Params, dump_params
from bert4rec.errors import UserError
from bert4rec.fileio import atomic_file, read_json, write_json
from bert4rec.paths import ProjectPaths

CHECKPOINT = re.compile(r"^ckpt-(\d+)\.npz$")


def model_name(params: Params) -> str:
    """train_val.model_name, else the pipeline's name from the architecture (hs64_l2_msl200_mpps40).

    The same function renders dvc.yaml, so the stage writes the folder the pipeline declares.
    """
    from bert4rec.pipeline import model_name as pipeline_model_name

    return pipeline_model_name(params)


def chosen_model(paths: ProjectPaths, params: Params, explicit: str | None) -> str:
    """The model a test/inference stage uses: the explicit name or the project's current one."""
    name = explicit or model_name(params)
    if not (paths.model_dir(name) / "weights.npz").exists():
        raise UserError(
            f"{paths.model_dir(name) / 'weights.npz'}: no trained model '{name}'; run the train_val stage first"
        )
    return name


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


def write_model_files(folder: Path, params: Params, info: dict, vocabulary: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(folder / "config.yaml") as tmp:
        tmp.write_text(dump_params(params))
    if not (folder / "items.parquet").exists():
        with atomic_file(folder / "items.parquet") as tmp:
            shutil.copyfile(vocabulary, tmp)
    write_json(folder / "model.json", info)


def read_model_info(folder: Path) -> dict:
    return read_json(
        folder / "model.json", "model description",
        required=("num_tokens", "model", "max_seq_length", "vocabulary_sha256"),
    )


def check_compatible(folder: Path, info: dict, manifest: dict, model: ModelParams | None = None) -> None:
    """Refuse a model whose vocabulary or architecture differs from the data/params at hand."""
    sha = manifest.get("vocabulary", {}).get("sha256")
    if sha and info["vocabulary_sha256"] != sha:
        raise UserError(
            f"{folder / 'items.parquet'}: model '{folder.name}' was trained with another item vocabulary "
            f"(sha256 {info['vocabulary_sha256'][:12]} vs the data's {sha[:12]}); retrain or use a matching model"
        )
    if info["num_tokens"] != manifest["num_tokens"]:
        raise UserError(f"{folder / 'model.json'}: num_tokens {info['num_tokens']} != data's {manifest['num_tokens']}")
    if info["max_seq_length"] != manifest["max_seq_length"]:
        raise UserError(
            f"{folder / 'model.json'}: model max_seq_length {info['max_seq_length']} differs from "
            f"tfrecord.max_seq_length {manifest['max_seq_length']}"
        )
    if model is not None:
        saved = info["model"]
        wanted = model.model_dump(mode="json")
        changed = [f"train_val.model.{k}: saved {saved.get(k)!r}, params {v!r}" for k, v in wanted.items() if saved.get(k) != v]
        if changed:
            raise UserError(
                f"{folder / 'model.json'}: params contradict the saved model '{folder.name}' ("
                + "; ".join(changed) + "); set train_val.model_name to a new name or restore the params"
            )


def load_model(folder: Path, manifest: dict):
    """Rebuild a trained model from model.json + weights.npz, checked against the data's vocabulary."""
    from bert4rec.model import build_model

    info = read_model_info(folder)
    check_compatible(folder, info, manifest)
    try:
        params = ModelParams.model_validate(info["model"])
    except ValueError as error:
        raise UserError(f"{folder / 'model.json'}: invalid model description ({error})") from None
    model = build_model(info["num_tokens"], params)
    weights = arrays_to_weights(load_arrays(folder / "weights.npz", "model weights"), "model/")
    set_model_weights(model, weights, folder / "weights.npz")
    return model, info


def item_ids(folder: Path) -> np.ndarray:
    """Original item ids in token order (token = index + 2), from the model's own vocabulary copy."""
    import pyarrow.parquet as pq

    path = folder / "items.parquet"
    if not path.exists():
        raise UserError(f"{path}: the model's vocabulary copy is missing; retrain the model")
    return pq.read_table(path, columns=["item_id"]).column("item_id").to_numpy(zero_copy_only=False)
