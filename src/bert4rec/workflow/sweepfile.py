"""Sweep files, `config/sweeps/<name>.yaml`: a grid and/or a random search over params keys.

    grid:                     # every combination of these values
      train_val.learning_rate: [0.001, 0.003]
      tfrecord.masked_lm_prob: [0.2, 0.4]
    random:                   # `samples` draws; with a grid, each draw is paired with every grid point
      samples: 4
      params:
        train_val.weight_decay: {log_uniform: [0.001, 0.1]}
        train_val.model.hidden_dropout_prob: {uniform: [0.0, 0.3]}
        train_val.model.hidden_size: {choice: [32, 64]}
        train_val.num_warmup_steps: {int_uniform: [100, 500]}
    set:                      # the same value in every point (e.g. a short training budget)
      train_val.num_train_steps: 600
    seed: 0                   # the random draws
    max_points: 16            # a sweep with more points is refused

Keys are dotted params keys, checked against the typed params (src/bert4rec/params.py): an
unknown key is an error naming it, and every point is validated as the project's params with
the point applied, so a bad value stops the sweep before anything is queued.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bert4rec.errors import UserError
from bert4rec.params import Params, describe_errors, parse_params, read_params_data, set_dotted
from bert4rec.workflow import dvcyaml

FOLDER = Path("config") / "sweeps"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
FIXED = {"train_val.model_name": "every point must write the model folder the pipeline declares"}
Scalar = bool | int | float | str | None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Distribution(Strict):
    """One of: choice (a list), uniform / log_uniform [low, high] floats, int_uniform [low, high]."""

    choice: list[Scalar] | None = Field(None, min_length=1)
    uniform: tuple[float, float] | None = None
    log_uniform: tuple[float, float] | None = None
    int_uniform: tuple[int, int] | None = None

    def problem(self) -> str | None:
        given = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(given) != 1:
            return f"give exactly one of {', '.join(type(self).model_fields)} (got {', '.join(given) or 'none'})"
        kind = given[0]
        if kind == "choice":
            return None
        low, high = getattr(self, kind)
        if low > high or (kind != "int_uniform" and low == high):
            return f"{kind}: low ({low}) must be below high ({high})"
        if kind == "log_uniform" and low <= 0:
            return f"log_uniform: low ({low}) must be above 0"
        return None

    def draw(self, rng: np.random.Generator) -> Scalar:
        if self.choice is not None:
            return self.choice[int(rng.integers(len(self.choice)))]
        if self.int_uniform is not None:
            return int(rng.integers(self.int_uniform[0], self.int_uniform[1] + 1))
        if self.uniform is not None:
            return float(f"{rng.uniform(*self.uniform):.4g}")  # readable values in `dvc exp show`
        low, high = self.log_uniform
        return float(f"{math.exp(rng.uniform(math.log(low), math.log(high))):.4g}")


class RandomSearch(Strict):
    samples: int = Field(ge=1)
    params: dict[str, Distribution]


class SweepFile(Strict):
    grid: dict[str, list[Scalar]] = {}
    random: RandomSearch | None = None
    set: dict[str, Scalar] = {}
    seed: int = Field(0, ge=0)
    max_points: int = Field(16, ge=1)


@dataclass
class Plan:
    """A validated sweep: its points (dotted key -> typed value), the keys that vary, the fixed ones."""

    name: str
    file: str
    points: list[dict[str, Scalar]]
    varied: list[str]
    fixed: dict[str, Scalar]


def available(root: Path) -> list[str]:
    folder = root / FOLDER
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def sweep_path(root: Path, name: str) -> Path:
    path = root / FOLDER / f"{name}.yaml"
    if not NAME.match(name or "") or not path.is_file():
        known = ", ".join(available(root)) or f"none yet: write {FOLDER}/<name>.yaml"
        raise UserError(f"{FOLDER / (name + '.yaml')}: sweep file not found; sweeps: {known}")
    return path


def read(path: Path, source: str) -> SweepFile:
    try:  # bytes that are not UTF-8, bad YAML, a key given twice: named with their line
        data = read_params_data(path)
    except UserError as error:
        raise UserError(str(error).replace(str(path), source, 1)) from None
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping with grid and/or random (README: Sweeps)")
    try:
        return SweepFile.model_validate(data)
    except ValidationError as error:
        raise UserError(describe_errors(error, source)) from None


def _check_key(key: str, where: str, known: set[str], source: str) -> None:
    if key in FIXED:
        raise UserError(f"{source}: {where}: '{key}' cannot be swept: {FIXED[key]}")
    if key in known:
        return
    if any(k.startswith(key + ".") for k in known):
        raise UserError(f"{source}: {where}: '{key}' is a section; name a key inside it (e.g. "
                        f"{sorted(k for k in known if k.startswith(key + '.'))[0]})")
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise UserError(f"{source}: {where}: unknown key '{key}' (not a parameter in src/bert4rec/params.py){hint}")


def check_structure(sweep: SweepFile, source: str) -> None:
    """Keys are parameters, the grid is not empty, no key appears twice, distributions are sound."""
    known = {k for section in Params.model_fields for k in dvcyaml.section_keys(Params(), section)}
    sections = {"grid": list(sweep.grid), "random.params": list(sweep.random.params) if sweep.random else [],
                "set": list(sweep.set)}
    for where, keys in sections.items():
        for key in keys:
            _check_key(key, where, known, source)
    if not sweep.grid and sweep.random is None:
        raise UserError(f"{source}: the grid is empty and there is no random search: nothing to sweep")
    for key, values in sweep.grid.items():
        if not values:
            raise UserError(f"{source}: grid: '{key}' has no values")
        repeated = [v for i, v in enumerate(values) if (type(v), v) in [(type(w), w) for w in values[:i]]]
        if repeated:  # by type too: 1 and true are equal in Python, not in params
            raise UserError(f"{source}: grid: '{key}' lists {repeated[0]!r} twice")
    for key, distribution in (sweep.random.params.items() if sweep.random else ()):
        if distribution.problem():
            raise UserError(f"{source}: random.params: '{key}': {distribution.problem()}")
    if sweep.random is not None and not sweep.random.params:
        raise UserError(f"{source}: random: 'params' is empty: name the keys to draw")
    twice = [k for k in sections["grid"] + sections["random.params"] + sections["set"]
             if (sections["grid"] + sections["random.params"] + sections["set"]).count(k) > 1]
    if twice:
        raise UserError(f"{source}: '{twice[0]}' appears in more than one of grid, random.params and set")


def _typed(params: Params, key: str) -> Scalar:
    value: object = params
    for part in key.split("."):
        value = getattr(value, part)
    return value


def validated(base: Params, point: dict[str, Scalar], source: str) -> dict[str, Scalar]:
    """The point as typed values, after validating the project's params with it applied."""
    data = base.model_dump(mode="json")
    for key, value in point.items():
        set_dotted(data, key, value, source)
    described = ", ".join(f"{k}={v}" for k, v in point.items())
    params = parse_params(data, f"{source}: point ({described})")
    return {key: _typed(params, key) for key in point}


def _distinct_draws(search: RandomSearch, rng: np.random.Generator, source: str, typed) -> list[dict[str, Scalar]]:
    """`samples` different draws: one that repeats an earlier draw once typed by the params (a
    choice among few values, or 20 and '20') is drawn again, as it would run the same point twice."""
    draws: list[dict[str, Scalar]] = []
    seen: set[tuple] = set()
    tries = 50 * search.samples
    for _ in range(tries):
        draw = {key: distribution.draw(rng) for key, distribution in search.params.items()}
        key = tuple((name, type(value).__name__, value) for name, value in typed(draw).items())
        if key not in seen:
            seen.add(key)
            draws.append(draw)
        if len(draws) == search.samples:
            return draws
    raise UserError(f"{source}: random: {tries} draws gave only {len(draws)} different points for samples: "
                    f"{search.samples}; lower samples or give random.params more values")


def plan(root: Path, name: str, base: Params) -> Plan:
    """Read, check and expand config/sweeps/<name>.yaml against the project's params `base`."""
    path = sweep_path(root, name)
    source = str(path.relative_to(root))
    sweep = read(path, source)
    check_structure(sweep, source)
    samples = sweep.random.samples if sweep.random else 1
    count = math.prod(len(values) for values in sweep.grid.values()) * samples
    if count > sweep.max_points:
        shape = " x ".join([str(len(v)) for v in sweep.grid.values()] + ([f"{samples} draws"] if sweep.random else []))
        raise UserError(f"{source}: {count} points ({shape}) exceed max_points {sweep.max_points}; "
                        "raise max_points or shrink the sweep")
    typed = lambda draw: validated(base, {**sweep.set, **draw}, source)  # noqa: E731
    draws = _distinct_draws(sweep.random, np.random.default_rng(sweep.seed), source, typed) if sweep.random else [{}]
    combinations = [dict(zip(sweep.grid, values)) for values in itertools.product(*sweep.grid.values())]
    points = [validated(base, {**sweep.set, **combination, **draw}, source)
              for combination in combinations for draw in draws]
    for key, values in sweep.grid.items():  # one value in two spellings (20 and '20') is one point twice
        typed = [validated(base, {**sweep.set, key: value}, source)[key] for value in values]
        repeated = [value for index, value in enumerate(typed) if value in typed[:index]]
        if repeated:
            raise UserError(f"{source}: grid: '{key}' lists {repeated[0]!r} twice once typed ({values})")
    varied = [k for k in [*sweep.grid, *(sweep.random.params if sweep.random else {})]
              if len({repr(p[k]) for p in points}) > 1]
    fixed = {k: points[0][k] for k in points[0] if k not in varied}
    return Plan(name, source, points, varied, fixed)
