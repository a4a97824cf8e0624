"""Typed, validated parameters: params.yaml is the only source of truth.

Each section is named after the DVC stage that reads it. Unknown keys, wrong types and
out-of-range values are errors that name the offending key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bert4rec.errors import UserError

Task = Literal["train_val_test", "train_val", "test", "inference"]
# Shortest history a user needs for each task (predecessor's rule): the held-out items plus
# at least one item of input.
MIN_HISTORY_BY_TASK = {"train_val_test": 3, "train_val": 2, "test": 2, "inference": 1}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Columns(Section):
    """Column names (str) or 0-based positions (int); None = detect."""

    user: str | int | None = None
    item: str | int | None = None
    timestamp: str | int | None = None
    items: str | int | None = None  # list-of-items column of a sequence table


class RawParams(Section):
    input: str = Field("data/external/interactions.txt", min_length=1)
    format: Literal["auto", "sequence_lines", "events", "sequence_table", "pickle"] = "auto"
    separator: str | None = None  # None = detect (tab, comma, '::', ';', space)
    header: bool | None = None  # None = detect
    columns: Columns = Columns()
    task: Task = "train_val_test"
    drop_consecutive_repeats: bool = False
    min_history_length: int | None = Field(None, ge=1)
    allow_pickle: bool = False
    users_per_chunk: int = Field(65536, ge=1)

    def min_length(self) -> int:
        return self.min_history_length or MIN_HISTORY_BY_TASK[self.task]


class TfrecordParams(Section):
    max_seq_length: int = Field(200, gt=0)
    masked_lm_prob: float = Field(0.2, ge=0.0, le=1.0)
    max_predictions_per_seq: int = Field(40, gt=0)
    mask_prob: float = Field(1.0, ge=0.0, le=1.0)
    dupe_factor: int = Field(10, ge=1)
    prop_sliding_window: float = 0.5
    short_seq_prob: float = Field(0.0, ge=0.0, le=1.0)
    masking: Literal["static", "dynamic"] = "dynamic"
    num_shards: int = Field(4, ge=1)
    pool_size: int = Field(2, ge=1)
    seed: int = Field(12345, ge=0)

    @field_validator("prop_sliding_window")
    @classmethod
    def _window(cls, value: float) -> float:
        if value != -1 and not 0 < value <= 1:
            raise ValueError("must be -1 (no sliding window) or in (0, 1]")
        return value

    @model_validator(mode="after")
    def _predictions_fit(self) -> "TfrecordParams":
        if self.max_predictions_per_seq > self.max_seq_length:
            raise ValueError(
                f"max_predictions_per_seq ({self.max_predictions_per_seq}) must not exceed "
                f"max_seq_length ({self.max_seq_length})"
            )
        return self


class ModelParams(Section):
    hidden_size: int = Field(64, gt=0)
    num_hidden_layers: int = Field(2, gt=0)
    num_attention_heads: int = Field(2, gt=0)
    intermediate_size: int = Field(256, gt=0)
    hidden_act: Literal["gelu", "relu", "swish"] = "gelu"
    hidden_dropout_prob: float = Field(0.1, ge=0.0, lt=1.0)
    attention_probs_dropout_prob: float = Field(0.1, ge=0.0, lt=1.0)
    initializer_range: float = Field(0.02, gt=0.0)
    max_position_embeddings: int = Field(200, gt=0)
    layer_norm: Literal["post", "pre"] = "pre"  # pre: norm before each sublayer (learns faster); post: BERT

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelParams":
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        return self


Objective = Literal["masked", "causal"]


class TrainValParams(Section):
    model_name: str | None = None  # None = generated from the hyperparameters
    # masked: BERT4Rec's cloze task over a bidirectional encoder; causal: SASRec-style, left-to-right
    # attention and the next item predicted at every position
    objective: Objective = "masked"
    model: ModelParams = ModelParams()
    loss: Literal["full_softmax", "sampled_softmax"] = "full_softmax"
    num_negatives: int = Field(1024, gt=0)
    negative_sampling: Literal["uniform", "popularity"] = "popularity"
    batch_size: int = Field(128, gt=0)
    eval_batch_size: int = Field(512, gt=0)
    num_train_steps: int = Field(20000, gt=0)
    num_warmup_steps: int = Field(500, ge=0)
    learning_rate: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    clip_norm: float = Field(5.0, gt=0.0)
    save_checkpoints_steps: int = Field(1000, gt=0)
    keep_checkpoints: int = Field(5, ge=1)
    eval_every_steps: int = Field(1000, gt=0)
    # validation during training on a fixed, seeded sample of this many users (all users if the
    # split has no more; None = all); the final validation always covers every user
    validation_users: int | None = Field(10000, ge=1)
    early_stopping_patience: int = Field(5, ge=0)  # evaluations without improvement; 0 = off
    log_every_steps: int = Field(100, gt=0)  # training loss/learning rate to MLflow and TensorBoard
    length_buckets: int = Field(4, ge=1)  # batches of similar lengths, cut to the bucket width; 1 = off
    training_time_limit_seconds: float | None = Field(None, gt=0)
    distribution: Literal["default", "mirrored", "multi_worker_mirrored"] = "default"
    mixed_precision: Literal["off", "mixed_bfloat16", "mixed_float16"] = "off"
    deterministic_ops: bool = False
    seed: int = Field(42, ge=0)

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_off(cls, value):
        # `dvc exp run -S` rewrites params.yaml as YAML 1.2, leaving `off` unquoted; PyYAML
        # (YAML 1.1) then reads it as False. Both spellings mean "off".
        return "off" if value is False else value


class TestParams(Section):
    batch_size: int = Field(512, gt=0)
    per_user_ranks: bool = False
    sampled_negatives: int = Field(0, ge=0)  # >0 adds the paper's sampled metrics


class InferenceParams(Section):
    top_k: int = Field(10, gt=0)
    batch_size: int = Field(256, gt=0)  # fastest on a 2-core CPU (bench-quality)
    item_predictions: bool = True
    user_embeddings: bool = False


class Params(Section):
    raw: RawParams = RawParams()
    tfrecord: TfrecordParams = TfrecordParams()
    train_val: TrainValParams = TrainValParams()
    test: TestParams = TestParams()
    inference: InferenceParams = InferenceParams()

    def model_name(self) -> str:
        """The one owner of the model's name: every stage and dvc.yaml use models/<this>/."""
        return self.train_val.model_name or default_model_name(self)


def default_model_name(params: Params) -> str:
    """A name from the hyperparameters that define the model, in the predecessor's style.

    Pinned into params.yaml when a project is created, so later parameter changes (e.g.
    `dvc exp run -S train_val.num_train_steps=200`) keep the model folder the pipeline declares.
    """
    t, m = params.tfrecord, params.train_val.model
    name = f"hs{m.hidden_size}_l{m.num_hidden_layers}_msl{t.max_seq_length}"
    return f"{params.train_val.objective}_{name}" + (f"_mpps{t.max_predictions_per_seq}" if params.train_val.objective == "masked" else "")


# Keys that earlier versions accepted: the error says what replaced them.
REMOVED_KEYS = {
    "test.model_name": "the test stage evaluates the model named by train_val.model_name",
    "inference.model_name": "the inference stage uses the model named by train_val.model_name",
}


def merge(base: dict, updates: dict) -> dict:
    """Nested update of a params mapping (sections, the model sub-section), in place."""
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def describe_errors(error: ValidationError, source: str) -> str:
    """One line per problem, naming the file and the dotted key."""
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            hint = f" (removed: {REMOVED_KEYS[key]})" if key in REMOVED_KEYS else ""
            lines.append(f"{source}: unknown key '{key}'{hint}")
        else:
            lines.append(f"{source}: {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def parse_params(data: dict | None, source: str = "params") -> Params:
    try:
        return Params.model_validate(data or {})
    except ValidationError as error:
        raise UserError(describe_errors(error, source)) from None


def load_params(path: str | Path) -> Params:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: parameters file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML: {error}") from None
    if data is not None and not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of stage sections, got {type(data).__name__}")
    return parse_params(data, str(path))


def dump_params(params: Params) -> str:
    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)


def params_hash(section: BaseModel, exclude: set[str] | None = None) -> str:
    """Stable hash of a section, recorded in manifests so stale outputs are detectable."""
    text = json.dumps(section.model_dump(mode="json", exclude=exclude), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
