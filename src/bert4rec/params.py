"""Typed, validated parameters: params.yaml is the only source of truth.

Each section is named after the DVC stage that reads it. Unknown keys, wrong types and
out-of-range values are errors that name the offending key.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from bert4rec.errors import UserError

Task = Literal["train_val_test", "train_val", "test", "inference"]
# Shortest history a user needs for each task (predecessor's rule): the held-out items plus
# at least one item of input. A time split holds out by date instead: any user may stay.
MIN_HISTORY_BY_TASK = {"train_val_test": 3, "train_val": 2, "test": 2, "inference": 1}
# The record splits the tfrecord stage writes for each task.
SPLITS_BY_TASK = {
    "train_val_test": ("train", "valid", "test", "inference"),
    "train_val": ("train", "valid", "inference"),
    "test": ("test",),
    "inference": ("inference",),
}
WINDOW_DATES = ("data_start", "validation_start", "test_start", "test_end")  # in increasing order


def epoch_seconds(moment: datetime) -> float:
    """Unix seconds of a parameter date; a date or time without a zone is UTC."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value, info: ValidationInfo):
        """YAML's true/on/yes are not the number 1 (pydantic would take them as 1)."""
        if isinstance(value, bool):
            annotation = cls.model_fields[info.field_name].annotation
            kinds = set(get_args(annotation)) or {annotation}
            if kinds & {int, float} and not kinds & {bool, str}:
                raise ValueError("expected a number")
        return value


class Columns(Section):
    """Column names (str) or 0-based positions (int); None = detect."""

    user: str | int | None = None
    item: str | int | None = None
    timestamp: str | int | None = None
    items: str | int | None = None  # list-of-items column of a sequence table

    @field_validator("*", mode="before")
    @classmethod
    def _name_or_position(cls, value):
        if value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            return value  # YAML's `true` is not position 1
        raise ValueError("expected a column name or a 0-based column position")


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
    # leave_one_out: the last items of every history are held out; time: the dates below are
    # (training < validation_start <= validation targets < test_start <= test targets < test_end)
    split: Literal["leave_one_out", "time"] = "leave_one_out"
    data_start: datetime | None = Field(None, validate_default=True)  # None: from the first event
    validation_start: datetime | None = Field(None, validate_default=True)
    test_start: datetime | None = Field(None, validate_default=True)
    test_end: datetime | None = Field(None, validate_default=True)  # None: to the last event

    @field_validator(*WINDOW_DATES)
    @classmethod
    def _window_dates(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        if info.data.get("split") != "time":
            if value is not None:
                raise ValueError("only used with raw.split: time")
            return value
        if value is None:
            if info.field_name in ("validation_start", "test_start"):
                raise ValueError("required with raw.split: time")
            return value
        earlier = [name for name in WINDOW_DATES[:WINDOW_DATES.index(info.field_name)]
                   if info.data.get(name) is not None]
        if earlier and epoch_seconds(value) <= epoch_seconds(info.data[earlier[-1]]):
            raise ValueError(f"must be after raw.{earlier[-1]} ({info.data[earlier[-1]].isoformat()})")
        return value

    @field_validator("separator")
    @classmethod
    def _one_character(cls, value: str | None) -> str | None:
        if value is None or value == "::" or (len(value) == 1 and value.isascii() and value not in '\r\n"'):
            return value
        hint = ' (for a tab write "\\t" in double quotes)' if value == "\\t" else ""
        raise ValueError(f"must be one ASCII character (not a quote or line break) or '::' (MovieLens .dat){hint}")

    @model_validator(mode="after")
    def _long_enough_for_task(self) -> "RawParams":
        if self.split == "time":  # holds out by date: any history length may stay
            return self
        needed = MIN_HISTORY_BY_TASK[self.task]
        if self.min_history_length is not None and self.min_history_length < needed:
            raise ValueError(
                f"raw.min_history_length ({self.min_history_length}) is below the {needed} items raw.task "
                f"{self.task} needs (held-out items plus one item of input)"
            )
        return self

    def min_length(self) -> int:
        if self.min_history_length:
            return self.min_history_length
        return 1 if self.split == "time" else MIN_HISTORY_BY_TASK[self.task]


class TfrecordParams(Section):
    max_seq_length: int = Field(200, gt=0)
    masked_lm_prob: float = Field(0.2, ge=0.0, le=1.0)
    max_predictions_per_seq: int = Field(40, gt=0)
    mask_prob: float = Field(1.0, ge=0.0, le=1.0)
    dupe_factor: int = Field(10, ge=1)
    prop_sliding_window: float = 0.25  # windows every 50 of 200 items: measured on ML-1M, two seeds (README)
    short_seq_prob: float = Field(0.0, ge=0.0, le=1.0)
    masking: Literal["static", "dynamic"] = "dynamic"
    num_shards: int = Field(4, ge=1)
    pool_size: int = Field(2, ge=1)
    seed: int = Field(12345, ge=0)  # static masking's draws only: dynamic masks are drawn from train_val.seed

    @field_validator("max_seq_length")
    @classmethod
    def _room_for_an_item(cls, value: int) -> int:
        if value < 2:
            raise ValueError("must be at least 2: training windows hold max_seq_length - 1 items (1 gives no "
                             "training examples) and every evaluation example an item and [MASK]")
        return value

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
    attention_probs_dropout_prob: float = Field(0.0, ge=0.0, lt=1.0)
    initializer_range: float = Field(0.02, gt=0.0)
    max_position_embeddings: int = Field(200, gt=0)
    layer_norm: Literal["post", "pre"] = "pre"  # pre: norm before each sublayer (learns faster); post: BERT
    # transformer: x + sublayer, feed-forward with hidden_act. ligr (the LiGR layer of eSASRec):
    # pre-norm, each sublayer's output gated by sigmoid(linear(x)), a SwiGLU feed-forward.
    block: Literal["transformer", "ligr"] = "transformer"

    @model_validator(mode="after")
    def _consistent(self) -> "ModelParams":
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.block == "ligr" and self.layer_norm != "pre":
            raise ValueError("block 'ligr' normalizes before each sublayer: it needs layer_norm 'pre'")
        return self


Objective = Literal["masked", "causal"]
PART = re.compile(r"^(head|output|embeddings|all|block_(0|[1-9][0-9]*))$")
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")  # models:/name/3, runs:/id/model, ...


class Phase(Section):
    """One phase of a fine-tuning schedule: which parts train, at what peak rate, until when."""

    train: list[str] = Field(min_length=1)  # head, output, embeddings, block_N (0 = lowest), all
    steps: int = Field(gt=0)  # at most this many steps
    learning_rate: float | None = Field(None, gt=0.0)  # None: train_val.learning_rate
    warmup_steps: int | None = Field(None, ge=0)  # None: min(train_val.num_warmup_steps, steps // 10)
    early_stopping_patience: int = Field(0, ge=0)  # evaluations without a better NDCG@10; 0 = all steps

    @field_validator("train")
    @classmethod
    def _parts(cls, parts: list[str]) -> list[str]:
        unknown = [part for part in parts if not PART.match(part)]
        if unknown:
            raise ValueError(f"unknown part(s) {unknown}; parts are head, output, embeddings, block_N, all")
        return parts


class TrainValParams(Section):
    # None = generated from the hyperparameters; a folder name under models/ and results/
    model_name: str | None = None
    # causal: SASRec-style, left-to-right attention and the next item predicted at every position
    # (the default: on ML-1M it passes the masked objective's best within 20 minutes, README);
    # masked: BERT4Rec's cloze task over a bidirectional encoder
    objective: Objective = "causal"
    # A trained model (models/<name> of this or another project, relative to the project folder,
    # or an MLflow model URI) whose weights start this training; its vocabulary is reconciled.
    init_from: str | None = Field(None, min_length=1)
    new_item_init: Literal["random", "mean"] = "random"  # rows of items the parent never saw (README)
    finetune_schedule: list[Phase] | None = Field(None, min_length=1)  # None: default when init_from
    model: ModelParams = ModelParams()
    loss: Literal["full_softmax", "sampled_softmax"] = "full_softmax"
    num_negatives: int = Field(1024, gt=0)
    negative_sampling: Literal["uniform", "popularity"] = "popularity"
    batch_size: int = Field(64, gt=0)  # chosen on two seeds of the causal objective (README)
    eval_batch_size: int = Field(512, gt=0)
    num_train_steps: int = Field(20000, gt=0)
    num_warmup_steps: int = Field(100, ge=0)
    learning_rate: float = Field(6e-3, gt=0.0)  # peak; chosen on two seeds of the causal objective (README)
    weight_decay: float = Field(0.1, ge=0.0)  # decoupled; measured with prop_sliding_window 0.25, two seeds (README)
    clip_norm: float = Field(5.0, gt=0.0)
    # validate and keep an exponential moving average of the weights with this decay (null = the
    # weights themselves; 0.999 measured on ML-1M, README); the weights' own valid_raw_* are logged too
    weight_average_decay: float | None = Field(0.999, gt=0.0, lt=1.0)
    save_checkpoints_steps: int = Field(500, gt=0)
    keep_checkpoints: int = Field(5, ge=1)
    eval_every_steps: int = Field(500, gt=0)
    # validation during training on a fixed, seeded sample of this many users (all users if the
    # split has no more; None = all); the final validation always covers every user
    validation_users: int | None = Field(10000, ge=1)
    early_stopping_patience: int = Field(10, ge=0)  # evaluations without improvement; 0 = off
    log_every_steps: int = Field(100, gt=0)  # training loss/learning rate to MLflow and TensorBoard
    length_buckets: int = Field(8, ge=1)  # batches of similar lengths, cut to the bucket width; 1 = off
    training_time_limit_seconds: float | None = Field(None, gt=0)
    distribution: Literal["default", "mirrored", "multi_worker_mirrored"] = "default"
    mixed_precision: Literal["off", "mixed_bfloat16", "mixed_float16"] = "off"
    jit_compile: bool = False  # the encoder's forward and backward pass compiled by XLA
    deterministic_ops: bool = False
    seed: int = Field(42, ge=0, le=2**32 - 1)  # Keras' seeds are 32-bit

    @field_validator("model_name")
    @classmethod
    def _folder_name(cls, value: str | None) -> str | None:
        if value is None or re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", value):
            return value
        raise ValueError("expected a folder name: letters, digits, '_', '-' or '.', at most 100 characters")

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_off(cls, value):
        # `dvc exp run -S` rewrites params.yaml as YAML 1.2, leaving `off` unquoted; PyYAML
        # (YAML 1.1) then reads it as False. Both spellings mean "off".
        return "off" if value is False else value

    @model_validator(mode="after")
    def _blocks_exist(self) -> "TrainValParams":
        layers = self.model.num_hidden_layers
        for index, phase in enumerate(self.finetune_schedule or []):
            missing = [p for p in phase.train if p.startswith("block_") and int(p[6:]) >= layers]
            if missing:
                raise ValueError(f"finetune_schedule.{index}.train: {missing} beyond the model's "
                                 f"{layers} blocks (block_0 .. block_{layers - 1})")
        return self

    def init_from_uri(self) -> bool:
        """Whether init_from names an MLflow model (a URI) rather than a models/<name> folder."""
        return bool(self.init_from and URI.match(self.init_from))


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
    name = f"hs{m.hidden_size}_l{m.num_hidden_layers}_msl{t.max_seq_length}" + ("_ligr" if m.block == "ligr" else "")
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


def set_dotted(data: dict, key: str, value, source: str) -> None:
    """data[section][...][leaf] = value for a dotted key (train_val.model.hidden_size)."""
    *sections, leaf = key.split(".")
    for section in sections:
        data = data.setdefault(section, {})
        if not isinstance(data, dict):
            raise UserError(f"{source}: '{section}' in {key} is not a section")
    data[leaf] = value


UNION_MEMBERS = {"bool": "true/false", "int": "an integer", "float": "a number", "str": "text",
                 "none": "null"}  # pydantic's tags in a union's errors


def describe_errors(error: ValidationError, source: str) -> str:
    """One line per problem, naming the file and the dotted key."""
    lines, alternatives = [], {}
    for item in error.errors():
        *loc, last = item["loc"] or ("(top level)",)
        if last in UNION_MEMBERS and loc:  # one line for a value that is none of a union's types
            key = ".".join(str(part) for part in loc)
            if key not in alternatives:
                alternatives[key] = []
                lines.append((key, item.get("input"), alternatives[key]))
            alternatives[key].append(UNION_MEMBERS[last])
            continue
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            hint = f" (removed: {REMOVED_KEYS[key]})" if key in REMOVED_KEYS else ""
            lines.append(f"{source}: unknown key '{key}'{hint}")
            continue
        message = item["msg"].removeprefix("Value error, ")
        if isinstance(item.get("input"), dict):  # a rule across keys: the message names them
            lines.append(f"{source}: {key}: {message}")
        else:
            lines.append(f"{source}: {key}: {message} (got {_shown(item.get('input'))})")
    return "\n".join(line if isinstance(line, str) else f"{source}: {line[0]}: expected {_one_of(line[2])} "
                     f"(got {line[1]!r})" for line in lines)


def _shown(value) -> str:
    """A value as the user wrote it: a YAML date is 2002-01-01, not datetime.date(2002, 1, 1)."""
    return value.isoformat() if isinstance(value, (date, datetime)) else repr(value)


def _one_of(kinds: list[str]) -> str:
    return kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " or " + kinds[-1]


def parse_params(data: dict | None, source: str = "params") -> Params:
    try:
        return Params.model_validate(data or {})
    except ValidationError as error:
        raise UserError(describe_errors(error, source)) from None


def _not_utf8(path: Path, data: bytes, error: UnicodeDecodeError) -> UserError:
    line = data.count(b"\n", 0, error.start) + 1
    column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
    return UserError(f"{path}: line {line}, column {column}: byte 0x{data[error.start]:02x} is not UTF-8; "
                     "save the file as UTF-8")


def _duplicate_key(node: yaml.Node, prefix: str = "") -> tuple[str, int, int] | None:
    """(dotted key, its line, the line it was first given on) of the first key given twice."""
    children = []
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key, value in node.value:
            name, line = str(key.value), key.start_mark.line + 1
            if name in first_line:
                return f"{prefix}{name}", line, first_line[name]
            first_line[name] = line
            children.append((value, f"{prefix}{name}."))
    elif isinstance(node, yaml.SequenceNode):
        children = [(item, prefix) for item in node.value]
    for child, child_prefix in children:
        found = _duplicate_key(child, child_prefix)
        if found:
            return found
    return None


def read_params_data(path: str | Path) -> object:
    """The YAML in a parameters file; unreadable bytes, bad YAML and a key given twice (PyYAML
    would silently keep the last) are errors naming the file and line."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: parameters file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected a YAML parameters file")
    try:
        data = path.read_bytes()
        text = data.decode("utf-8-sig")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        duplicate = _duplicate_key(node) if node is not None else None
        if duplicate:
            key, line, first = duplicate
            raise UserError(f"{path}: line {line}: duplicate key '{key}' (first given on line {first}); "
                            "give each key once")
        return yaml.safe_load(text)
    except UnicodeDecodeError as error:
        raise _not_utf8(path, data, error) from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}: {error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML: {error}") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read the parameters file ({error.strerror})") from None


def load_params(path: str | Path) -> Params:
    data = read_params_data(path)
    if data is not None and not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of stage sections, got {type(data).__name__}")
    return parse_params(data, str(path))


def dump_params(params: Params) -> str:
    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)


def params_hash(section: BaseModel, exclude: set[str] | None = None) -> str:
    """Stable hash of a section, recorded in manifests so stale outputs are detectable."""
    text = json.dumps(section.model_dump(mode="json", exclude=exclude), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
