"""records/manifest.json: what the tfrecord stage wrote, read and validated once by later stages.

It names every shard with its example count and sha256, the feature shapes, the vocabulary
(file + sha256) and the tfrecord parameters the records were built with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr, field_serializer

from bert4rec.errors import UserError
from bert4rec.fileio import read_typed, write_typed
from bert4rec.params import Task, TfrecordParams

MANIFEST = "manifest.json"
NO_EFFECT_ON_OUTPUT = {"pool_size"}  # parallelism only: the bytes are the same for any value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Shard(Strict):
    file: str
    examples: int
    sha256: str


class Split(Strict):
    examples: int
    users: int | None = None  # users with an example (a time split evaluates some users several times)
    features: dict[str, int]  # feature -> fixed length (-1: variable)
    shards: list[Shard]


class VocabularyRef(Strict):
    file: str
    sha256: str


class UnknownItems(Strict):
    input_items: int = 0  # history items not in the vocabulary (dropped from inputs)
    targets: int = 0  # held-out items not in the vocabulary (counted as misses)


class Manifest(Strict):
    task: Task
    masking: str
    params: TfrecordParams
    params_hash: str
    vocabulary: VocabularyRef
    vocab_size: int
    num_tokens: int
    special_tokens: dict[str, int]
    max_seq_length: int
    max_predictions_per_seq: int
    num_shards: int
    splits: dict[str, Split]
    unknown_items: UnknownItems
    split_method: Literal["leave_one_out", "time"] = "leave_one_out"  # raw.split: how targets were held out
    split_dates: dict[str, str | None] | None = None  # a time split's raw.data_start ... raw.test_end
    _folder: Path = PrivateAttr(default=Path("."))

    @field_serializer("params")
    def _params(self, params: TfrecordParams) -> dict:
        return params.model_dump(mode="json", exclude=NO_EFFECT_ON_OUTPUT)

    @property
    def folder(self) -> Path:
        """The records folder this manifest describes."""
        return self._folder

    @property
    def path(self) -> Path:
        return self._folder / MANIFEST

    @classmethod
    def read(cls, folder: Path) -> "Manifest":
        manifest = read_typed(folder / MANIFEST, cls, "tfrecord manifest (run the tfrecord stage)",
                              hint="; rerun the tfrecord stage")
        manifest._folder = folder
        return manifest

    def write(self, folder: Path) -> None:
        write_typed(folder / MANIFEST, self)

    def require_params(self, current: TfrecordParams) -> None:
        """The records were written with these tfrecord params (a stage run by hand after params.yaml
        changed would otherwise train or score stale records)."""
        written, wanted = self.params.model_dump(mode="json"), current.model_dump(mode="json")
        changed = [f"{key}: records {written.get(key)!r}, params {value!r}" for key, value in wanted.items()
                   if key not in NO_EFFECT_ON_OUTPUT and written.get(key) != value]
        if changed:
            raise UserError(f"{self.path}: the records were written with other tfrecord params ("
                            + "; ".join(f"tfrecord.{c}" for c in changed) + "); rerun the tfrecord stage "
                            "(`dvc repro` does) or restore the params")

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise UserError(f"{self.path}: no '{name}' split (task {self.task}); available: {', '.join(self.splits)}")
        return self.splits[name]

    def require_splits(self, *names: str, hint: str = "") -> None:
        missing = [name for name in names if name not in self.splits]
        if missing:
            raise UserError(f"{self.path}: task {self.task} has no {'/'.join(missing)} split{hint}")

    def shard_files(self, split: str, worker: int = 0, workers: int = 1) -> list[Path]:
        """This worker's shard files of a split (worker w reads shards w, w + workers, ...)."""
        shards = self.split(split).shards
        files = [self.folder / shard.file for i, shard in enumerate(shards) if i % workers == worker]
        for path in files:
            if not path.exists():
                raise UserError(f"{path}: shard listed in the manifest is missing; rerun the tfrecord stage")
        return files
