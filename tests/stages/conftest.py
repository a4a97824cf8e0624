"""The tiny model trained once per session on the learnable synthetic project (CPU, ~30 s)."""

import pytest

from helpers import run_stage

from .tiny import new_project


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Shared by the train_val, test and inference tests; a test that changes it works on a copy."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BERT4REC_TRACKING", "off")
        project = new_project(tmp_path_factory.mktemp("trained"))
        assert run_stage("train_val", project) == 0
    return project
