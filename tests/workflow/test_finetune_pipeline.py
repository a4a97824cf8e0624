"""The parent model of a fine-tuning is a DVC dependency of train_val."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from bert4rec.params import Params
from bert4rec.workflow import dvcyaml

from .repo import REPO, TINY, flags
from .test_end_to_end import ran

pytestmark = pytest.mark.slow


def test_train_val_reruns_when_the_parent_model_changes(repo, events):
    repo.run("bert4rec", "project", "parent", str(events), *flags(TINY))
    assert ran(repo.run("dvc", "repro", "train_val").stdout) == ["raw", "tfrecord", "train_val"]
    parent_model = yaml.safe_load((repo.root / "params.yaml").read_text())["train_val"]["model_name"]
    repo.run("bert4rec", "project", "child", str(events), *flags(TINY), "--set", "train_val.model_name=child",
             "--set", f"train_val.init_from=../parent/models/{parent_model}")
    deps = yaml.safe_load((repo.root / "dvc.yaml").read_text())["stages"]["train_val"]["deps"]
    assert f"projects/parent/models/{parent_model}" in deps
    assert ran(repo.run("dvc", "repro", "train_val").stdout) == ["raw", "tfrecord", "train_val"]
    assert ran(repo.run("dvc", "repro", "train_val").stdout) == []  # nothing changed

    weights = repo.root / "projects" / "parent" / "models" / parent_model / "weights.npz"
    with np.load(weights) as saved:  # the parent model changes (as if trained further)
        arrays = {key: saved[key] * 1.01 for key in saved.files}
    np.savez(weights, **arrays)
    assert ran(repo.run("dvc", "repro", "train_val").stdout) == ["train_val"]

def test_a_parent_outside_the_repository_or_in_mlflow():
    template = yaml.safe_load((REPO / "config" / "pipeline.yaml").read_text())

    def deps(init_from):
        params = Params.model_validate({"train_val": {"model_name": "m", "init_from": init_from}})
        return dvcyaml.render("projects/p", params, template, REPO)["stages"]["train_val"]["deps"]

    assert "/data/models/base" in deps("/data/models/base")
    assert "projects/p/models/base" in deps("models/base")
    assert not [d for d in deps("models:/base/3") if "base" in d]  # tracked by the params entry
