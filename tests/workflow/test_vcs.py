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


def test_commit_takes_names_with_spaces_non_ascii_letters_and_glob_characters(tmp_path):
    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    git("config", "user.name", "t")
    git("config", "user.email", "t@example.com")
    pointers = tmp_path / "projects" / "p" / "data" / "external"
    pointers.mkdir(parents=True)
    names = ["my data ü.csv.dvc", "x[1]*.csv.dvc"]
    for name in names:
        (pointers / name).write_text("outs: []\n")
    (tmp_path / "projects" / "p" / "params.yaml").write_text("raw: {}\n")
    assert vcs.commit(tmp_path, "pointers") is not None
    committed = set(git("ls-files", "-z").split("\0")) - {""}
    assert committed == {f"projects/p/data/external/{n}" for n in names} | {"projects/p/params.yaml"}
    subprocess.run(["git", "mv", str(pointers / names[1]), str(pointers / "renamed.csv.dvc")], cwd=tmp_path, check=True)
    assert vcs.commit(tmp_path, "rename") is not None  # both sides of a rename go into the commit
    assert "x[1]*.csv.dvc" not in git("ls-files") and git("status", "--porcelain") == ""
    (pointers / "my data ü.csv").write_text("1,2\n")  # data itself, under a name with a space: refused
    with pytest.raises(UserError, match="refusing to commit data.*my data ü.csv"):
        vcs.commit(tmp_path, "data")
    assert git("diff", "--cached", "--name-only") == ""
