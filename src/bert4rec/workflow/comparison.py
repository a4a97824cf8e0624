"""A sweep side by side: one row per experiment, best validation NDCG@10 (the selection metric)
first, then the baselines' test metrics; printed as a table and written as CSV."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from bert4rec.fileio import atomic_file

BASELINE = "baseline"
METRICS = ("valid_ndcg_at_10", "valid_hit_at_10", "test_ndcg_at_10", "test_hit_at_10", "training_seconds")


@dataclass(frozen=True)
class Scores:
    ndcg_at_10: float
    hit_at_10: float

    @classmethod
    def of(cls, metrics: dict | None) -> "Scores | None":
        if not metrics or "ndcg_at_10" not in metrics or "hit_at_10" not in metrics:
            return None
        return cls(float(metrics["ndcg_at_10"]), float(metrics["hit_at_10"]))


@dataclass
class Row:
    name: str
    status: str  # done, failed, queued, running, or baseline
    params: dict[str, object] = field(default_factory=dict)
    valid: Scores | None = None
    test: Scores | None = None
    training_seconds: float | None = None

    def values(self) -> dict[str, float | None]:
        valid, test = self.valid, self.test
        return {"valid_ndcg_at_10": valid and valid.ndcg_at_10, "valid_hit_at_10": valid and valid.hit_at_10,
                "test_ndcg_at_10": test and test.ndcg_at_10, "test_hit_at_10": test and test.hit_at_10,
                "training_seconds": self.training_seconds}


def ordered(rows: list[Row]) -> list[Row]:
    """Experiments by validation NDCG@10, best first (ties keep the sweep's order), those without
    a result after them, the baselines last."""
    experiments = [r for r in rows if r.status != BASELINE]
    scored = sorted((r for r in experiments if r.valid), key=lambda r: -r.valid.ndcg_at_10)
    return scored + [r for r in experiments if not r.valid] + [r for r in rows if r.status == BASELINE]


def _cells(row: Row, keys: list[str], precise: bool) -> list[str]:
    def number(name: str, value: float | None) -> str:
        if value is None:
            return ""
        if precise:
            return repr(value)
        return f"{value:.1f}" if name == "training_seconds" else f"{value:.4f}"

    params = [str(row.params[k]) if k in row.params else "" for k in keys]
    return [row.name, row.status, *params, *(number(k, v) for k, v in row.values().items())]


def table(rows: list[Row], keys: list[str]) -> str:
    """Aligned text: experiment, status, the varied keys, then the metrics."""
    header = ["experiment", "status", *keys, *METRICS]
    body = [_cells(row, keys, precise=False) for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    numeric = len(header) - len(METRICS)

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i >= numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(cells) for cells in body)])


def write_csv(path: Path, rows: list[Row], keys: list[str]) -> Path:
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["experiment", "status", *keys, *METRICS])
        writer.writerows(_cells(row, keys, precise=True) for row in rows)
    return path
