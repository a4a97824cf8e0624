"""Where each stage reads and writes inside projects/<name>/ (the predecessor's layout)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProjectPaths:
    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def external(self) -> Path:
        return self.root / "data" / "external"

    @property
    def interim(self) -> Path:
        return self.root / "data" / "interim"

    @property
    def sequences(self) -> Path:
        return self.interim / "sequences.parquet"

    @property
    def raw_summary(self) -> Path:
        return self.interim / "raw_summary.json"

    @property
    def processed(self) -> Path:
        return self.root / "data" / "processed"

    @property
    def records(self) -> Path:
        return self.processed / "records"

    @property
    def references(self) -> Path:
        return self.root / "references"

    @property
    def user_map(self) -> Path:
        return self.references / "users.parquet"

    @property
    def item_vocab(self) -> Path:
        return self.references / "items.parquet"

    def model_dir(self, model_name: str) -> Path:
        return self.root / "models" / model_name

    def checkpoint_area(self, model_name: str) -> Path:
        """Resumable training state, outside DVC's outputs (DVC clears models/<name> before a run)."""
        return self.root / "checkpoints" / model_name

    def results_dir(self, model_name: str) -> Path:
        return self.root / "results" / model_name

    def resolve_input(self, path: str) -> Path:
        candidate = Path(path)
        return candidate if candidate.is_absolute() else self.root / candidate
