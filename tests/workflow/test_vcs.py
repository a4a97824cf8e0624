"""The git/DVC module's own checks (the workflow through it: test_make, test_end_to_end)."""

import fcntl
import subprocess

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
                                          ("https://host/x", "or a local folder"),
                                          ("b4r/store", "b4r/store is inside the repository"),
                                          ("./", "is inside the repository")])
def test_a_remote_this_project_cannot_use_is_one_line(url, problem, tmp_path):
    with pytest.raises(UserError, match=problem):
        vcs.require_remote_url(url, tmp_path)
    for fine in ("s3://bucket/path", "/srv/dvc-remote", "../remote"):
        vcs.require_remote_url(fine, tmp_path)


def test_an_endpoint_without_a_remote_url_is_one_line(tmp_path):
    with pytest.raises(UserError, match="DVC_REMOTE_ENDPOINT_URL is set .* but DVC_REMOTE_URL is not"):
        vcs.configure_remotes(tmp_path, {"DVC_REMOTE_ENDPOINT_URL": "http://127.0.0.1:9000"})


def test_a_failed_dvc_command_is_told_by_its_error_line_not_the_support_footer():
    stderr = ("Collecting\nERROR: unexpected error - Could not connect to the endpoint URL: \"http://h/x\"\n\n"
              "Having any troubles? Hit us up at https://dvc.org/support, we are always happy to help!\n")
    result = subprocess.CompletedProcess([], 255, "", stderr)
    assert vcs.dvc_reason(result) == 'unexpected error - Could not connect to the endpoint URL: "http://h/x"'
    assert vcs.dvc_reason(subprocess.CompletedProcess([], 1, "", "")) == "unknown error"
