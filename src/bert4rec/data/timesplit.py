"""Time-based splits: training, validation and test windows cut at dates (raw.split: time).

Training sees the events before validation_start only. Every event in [validation_start,
test_start) that has an earlier event of the same user is a validation target, predicted from
all of that user's events before it (in time order; ties keep input order); test targets
likewise in [test_start, test_end). So no target and no input ever comes from after the
target, and no training input from after validation_start. Items first seen after
validation_start are not in the vocabulary (built from the training window).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from bert4rec.errors import UserError
from bert4rec.params import WINDOW_DATES, RawParams, epoch_seconds

WINDOWS = ("train", "valid", "test")
SCALE = {"s": 1.0, "ns": 1e9}  # data time units per second


@dataclass(frozen=True)
class Windows:
    """The split dates in the data's own time unit (unix seconds, or ns for date columns)."""

    unit: str
    data_start: float
    validation_start: float
    test_start: float
    test_end: float

    @classmethod
    def of(cls, raw: RawParams, unit: str) -> "Windows":
        def at(moment: datetime | None, default: float) -> float:
            return default if moment is None else epoch_seconds(moment) * SCALE[unit]

        return cls(unit, at(raw.data_start, -np.inf), at(raw.validation_start, 0.0), at(raw.test_start, 0.0),
                   at(raw.test_end, np.inf))

    @classmethod
    def for_split(cls, raw: RawParams, unit: str | None, missing: str) -> "Windows | None":
        """The time split's dates in the data's unit; None for leave-one-out; data without
        timestamps (unit None) under a time split is the error `missing`."""
        if raw.split != "time":
            return None
        if unit is None:
            raise UserError(missing)
        return cls.of(raw, unit)

    def keep(self, times: np.ndarray) -> np.ndarray:
        """Events inside [data_start, test_end)."""
        return (times >= self.data_start) & (times < self.test_end)

    def window_of(self, times: np.ndarray) -> np.ndarray:
        """0 train (before validation_start), 1 validation, 2 test."""
        return np.searchsorted(np.asarray([self.validation_start, self.test_start]), times, side="right")

    def label(self, value: float) -> str:
        return datetime.fromtimestamp(float(value) / SCALE[self.unit], timezone.utc).strftime("%Y-%m-%d %H:%M:%S")

    def span(self, first: float, last: float) -> str:
        """'; the input's events span <date> .. <date> UTC', or what is wrong with the numbers."""
        try:
            return f"; the input's events span {self.label(first)} .. {self.label(last)} UTC"
        except (ValueError, OverflowError, OSError):  # beyond the years datetime knows
            return (f"; the input's timestamps run from {first:.0f} to {last:.0f}, not dates as unix seconds "
                    "(milliseconds?); expected seconds since 1970")


def user_cuts(times: np.ndarray, offsets: np.ndarray, windows: Windows) -> tuple[np.ndarray, np.ndarray]:
    """Per user (times flat, users at offsets): the flat index where validation starts and where
    the test window starts (each user's times are sorted)."""
    starts, lengths = offsets[:-1], np.diff(offsets)
    owner = np.repeat(np.arange(len(starts)), lengths)
    window = windows.window_of(times)
    before_valid = np.bincount(owner, weights=window == 0, minlength=len(starts)).astype(np.int64)
    before_test = np.bincount(owner, weights=window <= 1, minlength=len(starts)).astype(np.int64)
    return starts + before_valid, starts + before_test


@dataclass
class WindowCounts:
    """Events, users and targets per window, and which items occur in each, for the raw summary."""

    n_items: int
    events: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))
    users: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))
    targets: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))
    users_evaluated: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))
    item_events: np.ndarray | None = None  # (n_items, 3)

    def add(self, lengths: np.ndarray, items: np.ndarray, times: np.ndarray, windows: Windows) -> None:
        """One chunk of users (events sorted by user, then time)."""
        if self.item_events is None:
            self.item_events = np.zeros((self.n_items, 3), np.int64)
        user = np.repeat(np.arange(len(lengths)), lengths)
        window = windows.window_of(times)
        has_history = np.arange(len(user)) - np.repeat(np.cumsum(lengths) - lengths, lengths) >= 1
        self.events += np.bincount(window, minlength=3)
        self.users += np.bincount(np.unique(user * 3 + window) % 3, minlength=3)
        self.targets += np.bincount(window[has_history], minlength=3)
        self.users_evaluated += np.bincount(np.unique((user * 3 + window)[has_history]) % 3, minlength=3)
        self.item_events += np.bincount(items * 3 + window, minlength=3 * self.n_items).reshape(-1, 3)

    def summary(self, windows: Windows, raw: RawParams) -> dict:
        counts = self.item_events if self.item_events is not None else np.zeros((self.n_items, 3), np.int64)
        new = counts[:, 0] == 0  # never in the training window: unknown to the vocabulary
        bounds = [raw.data_start, raw.validation_start, raw.test_start, raw.test_end]
        out = {}
        for w, name in enumerate(WINDOWS):
            entry = {"from": _iso(bounds[w]), "to": _iso(bounds[w + 1]), "events": int(self.events[w]),
                     "users": int(self.users[w])}
            if w:
                entry.update(targets=int(self.targets[w]), users_evaluated=int(self.users_evaluated[w]),
                             new_items=int((new & (counts[:, w] > 0)).sum()),
                             new_item_events=int(counts[new, w].sum()))
            out[name] = entry
        return out

    def check(self, windows: Windows, raw: RawParams, source: str, span: tuple[float, float], splits) -> None:
        """Windows a task needs must not end up empty: one line naming the dates."""
        seen = windows.span(*span)
        if "train" in splits and not self.events[0]:
            since = f"from raw.data_start ({raw.data_start.isoformat()}) " if raw.data_start else ""
            raise UserError(f"{source}: raw.split time: no training events {since}before raw.validation_start "
                            f"({raw.validation_start.isoformat()})" + seen)
        for w, split, key, end in ((1, "valid", "validation_start", "test_start"), (2, "test", "test_start", "test_end")):
            if split in splits and not self.targets[w]:
                until = getattr(raw, end).isoformat() if getattr(raw, end) else "the last event"
                raise UserError(f"{source}: raw.split time: no {'validation' if w == 1 else 'test'} targets from "
                                f"raw.{key} ({getattr(raw, key).isoformat()}) to {until} (a target is an event "
                                "after an earlier event of the same user)" + seen)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def split_dates(raw: RawParams) -> dict[str, str | None]:
    """raw.data_start ... raw.test_end as ISO text (for the manifest)."""
    return {key: _iso(getattr(raw, key)) for key in WINDOW_DATES}
