"""The git/DVC module's own checks (the workflow through it: test_make, test_end_to_end)."""

import fcntl

import pytest

from bert4rec.errors import UserError

from bert4rec.workflow import vcs


def test_dvc_lock_holder_names_the_process_holding_dvcs_lock(tmp_path):
    lock = tmp_path / ".dvc" / "tmp" / "lock"
    assert vcs.dvc_lock_holder(tmp_path) is None  # no lock file
    lock.parent.mkdir(parents=True)
    lock.write_text("{\"pid\": 4242, \"cmd\": \"dvc repro\"}")
    assert vcs.dvc_lock_holder(tmp_path) is None  # nobody holds it
    with open(lock, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert vcs.dvc_lock_holder(tmp_path) == "{\"pid\": 4242, \"cmd\": \"dvc repro\"}"
    assert vcs.dvc_lock_holder(tmp_path) is None


@pytest.mark.parametrize("url, problem", [("s3://", "with a bucket name"), ("gs://bucket/x", "or a local folder"),
                                          ("https://host/x", "or a local folder")])
def test_a_remote_this_project_cannot_use_is_one_line(url, problem):
    with pytest.raises(UserError, match=problem):
        vcs.require_remote_url(url)
    for fine in ("s3://bucket/path", "/srv/dvc-remote", "../remote"):
        vcs.require_remote_url(fine)
