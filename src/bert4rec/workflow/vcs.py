"""The only module that talks to git and DVC: subprocess calls to `git` and the venv's `dvc`.

Keeping every call here means one place decides what gets committed (code, params, pipeline,
`.dvc` pointer files — never `.env`, data or models) and how a failure is reported.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bert4rec import credentials
from bert4rec.errors import UserError
from bert4rec.fileio import hold_lock, try_lock

log = logging.getLogger("bert4rec.vcs")

# What a pipeline commit may contain: code, parameters, the pipeline and DVC pointer files.
COMMIT_PATHS = (
    "src", "tests", "config", "Makefile", "pyproject.toml", "requirements.lock", "README.md",
    ".ci", ".gitignore", ".dvcignore", ".dvc/config", ".dvc/.gitignore", ".env.example",
    "dvc.yaml", "dvc.lock", "params.yaml", "projects",
)
ALLOWED_UNDER_DATA = (".dvc", ".gitignore", "data/interim/raw_summary.json")


def dvc_executable() -> str:
    """The `dvc` of the interpreter running us (the project's venv), else the one on PATH."""
    candidate = Path(sys.executable).with_name("dvc")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("dvc")
    if not found:
        raise UserError("dvc: command not found; run `make install` first")
    return found


def _run(args: list[str], cwd: Path, check: bool = True, env: dict | None = None,
         capture: bool = True) -> subprocess.CompletedProcess:
    shown = credentials.masked(" ".join(args))
    log.debug("$ %s", shown)
    try:
        result = subprocess.run(
            args, cwd=cwd, env=env, text=True,
            stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE if capture else None,
        )
    except FileNotFoundError:
        raise UserError(f"{args[0]}: command not found") from None
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip() if capture else ""
        raise UserError(f"`{shown}` failed (exit {result.returncode})" + (f": {credentials.masked(detail)}" if detail else ""))
    return result


def git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run(["git", *args], root, check=check)


def dvc(root: Path, *args: str, check: bool = True, env: dict | None = None,
        capture: bool = True) -> subprocess.CompletedProcess:
    return _run([dvc_executable(), *args], root, check=check, env=env, capture=capture)


# ---------------------------------------------------------------- git state

def is_git_repo(root: Path) -> bool:
    return git(root, "rev-parse", "--is-inside-work-tree", check=False).returncode == 0


def require_repo(root: Path) -> None:
    if not is_git_repo(root):
        raise UserError(f"{root}: not a git repository; the pipeline records every run's commit (run `git init`)")
    if not (root / ".dvc").is_dir():
        top = Path(git(root, "rev-parse", "--show-toplevel", check=False).stdout.strip() or root)
        if top.resolve() != root.resolve() and (top / ".dvc").is_dir():
            raise UserError(f"{root}: run this from the repository's root, {top}")
        raise UserError(f"{root}: DVC is not initialised here (run `dvc init`)")


REPOSITORY_LOCK = Path(".dvc") / "tmp" / "bert4rec-run.lock"


def hold_repository(root: Path, command: str) -> None:
    """One pipeline command at a time (`make <stage>`, `make sweep`, `make promote`, switching or
    creating a project), and none while another DVC command holds DVC's lock; the lock goes
    with the process."""
    require_repo(root)
    hold_lock(root / REPOSITORY_LOCK, command, "the repository is busy")
    holder = dvc_lock_holder(root)
    if holder:
        raise UserError(f"the repository is busy: a DVC command (pid {holder}) holds .dvc/tmp/lock; "
                        "wait for it to finish or stop it")


def head_commit(root: Path) -> str | None:
    result = git(root, "rev-parse", "HEAD", check=False)
    return result.stdout.strip() if result.returncode == 0 else None


# Files the pipeline itself rewrites while `dvc repro` runs; they do not make a run's code dirty.
BOOKKEEPING = ("dvc.lock", "projects/*/config/config_mlflow.yaml")


def is_dirty(root: Path) -> bool:
    """Tracked code/params/pipeline files differ from HEAD (untracked files and bookkeeping do not count)."""
    excludes = [f":(exclude,glob){pattern}" for pattern in BOOKKEEPING]
    result = git(root, "status", "--porcelain", "--untracked-files=no", "--", ".", *excludes, check=False)
    return result.returncode != 0 or bool(result.stdout.strip())


def branch(root: Path) -> str | None:
    result = git(root, "symbolic-ref", "--short", "-q", "HEAD", check=False)
    return result.stdout.strip() or None


def remotes(root: Path) -> list[str]:
    return git(root, "remote", check=False).stdout.split()


def commit(root: Path, message: str) -> str | None:
    """Stage changes of code/params/pipeline files and commit them; None when nothing changed.

    Data, models, `.env` and DVC's local config are never staged, even if .gitignore misses them.
    """
    present = [p for p in COMMIT_PATHS if (root / p).exists()]
    if not present:
        return None
    require_committable(root)
    git(root, "add", "-A", "--", *present)
    # NUL-separated and taken literally: names may hold spaces, non-ASCII letters or glob characters
    staged = [name for name in git(root, "diff", "--cached", "--name-only", "--no-renames", "-z").stdout.split("\0") if name]
    forbidden = [name for name in staged if _forbidden(name)]
    if forbidden:
        git(root, "--literal-pathspecs", "reset", "-q", "--", *forbidden)
        raise UserError(
            "refusing to commit data, model or secret files (add them to DVC or .gitignore): "
            + ", ".join(forbidden)
        )
    if not staged:
        return None
    try:
        git(root, "--literal-pathspecs", "commit", "-q", "-m", message, "--", *staged)
    except UserError:
        git(root, "--literal-pathspecs", "reset", "-q", "--", *staged, check=False)  # nothing left staged
        raise
    return head_commit(root)


def require_committable(root: Path) -> None:
    """Checked before anything is staged: a merge, rebase or cherry-pick in progress, or git
    without a name and e-mail to commit with, would stop the commit half-way."""
    for marker, what, leave in (("MERGE_HEAD", "a merge", "git merge --abort"),
                                ("CHERRY_PICK_HEAD", "a cherry-pick", "git cherry-pick --abort"),
                                ("REBASE_HEAD", "a rebase", "git rebase --abort")):
        if git(root, "rev-parse", "-q", "--verify", marker, check=False).returncode == 0:
            raise UserError(f"{what} is in progress in {root}; finish it (commit) or leave it (`{leave}`), then rerun")
    if git(root, "var", "GIT_COMMITTER_IDENT", check=False).returncode != 0:
        raise UserError("git has no name and e-mail to commit with; set them: git config user.name \"Your Name\" "
                        "&& git config user.email you@example.com")


def _forbidden(name: str) -> bool:
    parts = Path(name).parts
    if Path(name).name == ".env" or name == ".dvc/config.local":
        return True
    if len(parts) >= 3 and parts[0] == "projects" and parts[2] in ("data", "models"):
        return not name.endswith(ALLOWED_UNDER_DATA)
    if len(parts) >= 3 and parts[0] == "projects" and parts[2] == "results":
        return name.endswith(".parquet")  # per-user outputs derived from the data: DVC's job
    return False


def push(root: Path) -> str:
    """Push the current branch when the repo has a remote; a failure is reported, not fatal."""
    names = remotes(root)
    if not names:
        return "git: no remote configured; commits stay local"
    remote = "origin" if "origin" in names else names[0]
    current = branch(root)
    if current is None:
        return "git: detached HEAD; not pushing"
    result = git(root, "push", "-q", "-u", remote, current, check=False)
    if result.returncode != 0:
        url = git(root, "remote", "get-url", remote, check=False).stdout.strip()
        lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("hint:")]
        reason = next((line.removeprefix("error: ").removeprefix("fatal: ") for line in lines
                       if line.startswith(("error:", "fatal:", " ! "))), lines[-1] if lines else "unknown error")
        return f"git: push to {remote} ({url}) failed, carrying on: {' '.join(reason.split())}"
    return f"git: pushed {current} to {remote}"


# ---------------------------------------------------------------- DVC

def dvc_add(root: Path, path: Path) -> Path:
    """Track an input file with DVC; returns its .dvc pointer file (committed instead of the data)."""
    dvc(root, "add", "-q", str(path.relative_to(root)))
    return path.with_name(path.name + ".dvc")


def dvc_hash(pointer: Path) -> str | None:
    """The md5 DVC recorded for a tracked file: the dataset's identity for lineage."""
    import yaml

    if not pointer.exists():
        return None
    data = yaml.safe_load(pointer.read_text()) or {}
    outs = data.get("outs") or [{}]
    return outs[0].get("md5")


def dvc_lock_holder(root: Path) -> str | None:
    """The PID in DVC's repository lock (.dvc/tmp/lock) while another DVC process holds it."""
    path = root / ".dvc" / "tmp" / "lock"
    if not path.exists():
        return None
    with open(path, "a+") as handle:  # closing it releases a lock taken to look
        owner = try_lock(handle)
    return None if owner is None else owner or "unknown"


def repro(root: Path, stage: str | None, force: bool, env: dict) -> int:
    """Run `dvc repro`, streaming its output; returns the exit code.

    DVC stays in the caller's process group, so whatever stops the group (Ctrl-C in the terminal,
    a kill of `make`'s group) stops DVC and the stage with it. When only this process is stopped
    (SIGTERM or SIGINT to it), the stop is passed on; either way it returns once they have unwound.
    """
    args = [dvc_executable(), "repro"] + ([stage] if stage else []) + (["-f"] if force else [])
    log.debug("$ %s", " ".join(args))
    process = subprocess.Popen(args, cwd=root, env=env)
    try:
        return process.wait()
    except KeyboardInterrupt as stop:
        _unwind(process, passed_on=type(stop) is not KeyboardInterrupt)
        raise


UNWIND_SECONDS = 60.0
SIGINT_GRACE_SECONDS = 10.0


def _unwind(process: subprocess.Popen, passed_on: bool) -> None:
    """Let DVC and its stage end after an interrupt: Ctrl-C reached them too (the terminal
    signals the whole group); a SIGTERM to this process alone, or a SIGINT that did not reach
    them, is sent on as SIGTERM. Whatever is left after UNWIND_SECONDS is killed."""
    import psutil

    try:
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    if not passed_on:  # Ctrl-C: they stop by themselves, unless the SIGINT was sent to this process alone
        _, family = psutil.wait_procs(family, timeout=SIGINT_GRACE_SECONDS)
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    _, alive = psutil.wait_procs(family, timeout=UNWIND_SECONDS)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    process.wait()


def restore_outputs(root: Path, project_dir: str) -> str:
    """After a failed or stopped `dvc repro`: DVC deletes a stage's outputs before running it,
    so put back what dvc.lock records (from the cache) and the tracked metrics files from HEAD."""
    checkout = dvc(root, "checkout", "--force", "--quiet", "--allow-missing", check=False)  # missing: never ran
    deleted = [p for p in git(root, "ls-files", "-z", "--deleted", "--", project_dir, check=False).stdout.split("\0") if p]
    if deleted:
        git(root, "--literal-pathspecs", "checkout", "HEAD", "--", *deleted, check=False)
    if checkout.returncode != 0:
        detail = " ".join((checkout.stderr or checkout.stdout or "").split())[:200]
        return f"dvc checkout could not restore every earlier output ({detail})"
    return ("earlier outputs restored as dvc.lock records them (dvc checkout); outputs of a stage DVC never ran "
            "(run by hand only) had no copy in DVC's cache to restore")


def remote_url(root: Path) -> tuple[str | None, str | None]:
    """(default remote name, its URL) from DVC's merged config; local paths made absolute."""
    result = dvc(root, "remote", "default", check=False)
    name = result.stdout.strip() if result.returncode == 0 else None
    if not name or " " in name:  # "No default remote set"
        return None, None
    result = dvc(root, "config", f"remote.{name}.url", check=False)
    url = result.stdout.strip() if result.returncode == 0 else None
    if url and "://" not in url and not Path(url).is_absolute():
        url = str((root / ".dvc" / url).resolve())  # DVC stores local paths relative to .dvc/
    return name, url


def _remote_endpoint(root: Path, name: str) -> str | None:
    result = dvc(root, "config", f"remote.{name}.endpointurl", check=False)
    return result.stdout.strip() or None


def configure_remotes(root: Path, env: dict | None = None) -> str:
    """Local directory remote by default; an S3 remote from `.env` settings, kept in config.local.

    The committed `.dvc/config` only ever names the local remote; the S3 URL, endpoint and
    credentials go to `.dvc/config.local`, which DVC keeps out of git.
    """
    env = dict(os.environ if env is None else env)
    url = env.get("DVC_REMOTE_URL", "").strip()
    if not url and env.get("DVC_REMOTE_ENDPOINT_URL", "").strip():
        raise UserError("DVC_REMOTE_ENDPOINT_URL is set (in .env or the environment) but DVC_REMOTE_URL is not: "
                        "set DVC_REMOTE_URL=s3://<bucket>/<path> too, or remove the endpoint to use the local remote")
    names = dvc(root, "remote", "list", "--project", check=False).stdout.split()[::2]
    if "local" not in names:
        dvc(root, "remote", "add", "--project", "local", ".dvc-remote")
        dvc(root, "remote", "default", "--project", "local")
    if not url:
        local_names = dvc(root, "remote", "list", "--local", check=False).stdout.split()[::2]
        if "storage" in local_names:
            dvc(root, "remote", "remove", "--local", "storage")
        return "dvc: local directory remote .dvc-remote/"
    require_remote_url(url, root)
    dvc(root, "remote", "add", "--local", "--force", "storage", url)
    dvc(root, "remote", "default", "--local", "storage")
    settings = {
        "endpointurl": env.get("DVC_REMOTE_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL"),
        "access_key_id": env.get("AWS_ACCESS_KEY_ID"),
        "secret_access_key": env.get("AWS_SECRET_ACCESS_KEY"),
        "region": env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION"),
    }
    if not url.startswith("s3://"):  # a folder remote takes no S3 settings (AWS ones may be there for others)
        settings = {}
    for key, value in settings.items():
        if value:
            dvc(root, "remote", "modify", "--local", "storage", key, value)
    endpoint = credentials.without_credentials(settings.get("endpointurl"))
    return f"dvc: remote {credentials.without_credentials(url)}" + (f" (endpoint {endpoint})" if endpoint else "")


def require_remote_url(url: str, root: Path) -> None:
    """DVC_REMOTE_URL is an S3 bucket (dvc-s3 is installed) or a folder; anything else is one line
    before .dvc/config.local is touched."""
    shown = credentials.without_credentials(url)
    if re.match(r"^s3://[^/]+", url):
        return
    if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", url):
        folder = (root / Path(url).expanduser()).resolve()  # DVC reads a relative path from the repository root
        if folder.is_relative_to(root.resolve()):
            raise UserError(f"DVC_REMOTE_URL ({shown}): the folder {folder} is inside the repository, where its "
                            "files would show as untracked; give a folder outside it (e.g. /srv/dvc-store) or "
                            "s3://<bucket>/<path>")
        return
    if url.startswith("s3:"):
        raise UserError(f"DVC_REMOTE_URL ({shown}): expected s3://<bucket>/<path>, with a bucket name")
    raise UserError(f"DVC_REMOTE_URL ({shown}): expected s3://<bucket>/<path> (the remote this project installs "
                    "dvc-s3 for) or a local folder; fix it in .env")


def dvc_reason(result: subprocess.CompletedProcess) -> str:
    """DVC's own error line (credentials masked), not the support footer it prints after it."""
    lines = [line.strip() for line in credentials.masked(result.stderr or result.stdout).splitlines()]
    lines = [line for line in lines if line and "dvc.org/support" not in line and "Having any troubles" not in line]
    errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["unknown error"])[0][:500]


def dvc_push(root: Path) -> str:
    """Push outputs to the default remote; an unreachable remote is an error naming its URL."""
    name, url = remote_url(root)
    if name is None:
        return "dvc: no remote configured; outputs stay in the local cache"
    result = dvc(root, "push", check=False)  # not -q: that leaves only the support footer on failure
    if result.returncode != 0:
        endpoint = credentials.without_credentials(_remote_endpoint(root, name))
        where = credentials.without_credentials(url) + (f" (endpoint {endpoint})" if endpoint else "")
        raise UserError(
            f"dvc push to remote '{name}' at {where} failed: {dvc_reason(result)}; "
            "the results are committed locally: run `dvc push` once the remote works"
        )
    return f"dvc: pushed outputs to {credentials.without_credentials(url)}"


def dvc_pull(root: Path, *targets: str) -> None:
    name, url = remote_url(root)
    result = dvc(root, "pull", *targets, check=False)
    if result.returncode != 0:
        raise UserError(f"dvc pull from remote '{name}' at {credentials.without_credentials(url)} failed: "
                        f"{dvc_reason(result)}")


# ---------------------------------------------------------------- DVC experiments (sweeps)

QUEUE_DONE = ("Success", "Failed")


def changed_files(root: Path, since: str, until: str = "HEAD") -> list[str]:
    """Tracked files that differ between two commits."""
    return [name for name in git(root, "diff", "--name-only", "-z", since, until).stdout.split("\0") if name]


def override(value) -> str:
    """A parameter value as `dvc exp run -S key=<value>` reads it (Hydra's override grammar)."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, (int, float)):
        return repr(value)
    # Hydra's quoted string: taken literally but for quotes (and the backslashes before them) and
    # ${...} interpolation, so those alone are escaped (JSON's \t and \u00e9 would stay as typed)
    text = str(value)
    quote = "'" if '"' in text and "'" not in text else '"'
    text = re.sub(r"(\\*)" + quote, lambda m: m.group(1) * 2 + "\\" + quote, text)
    text = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text).replace("${", "\\${")
    return quote + text + quote


def exp_queue(root: Path, name: str, assignments: dict[str, object]) -> None:
    """Queue one experiment of the whole pipeline (`dvc exp run --queue --name NAME -S key=value ...`)."""
    overrides = [arg for key, value in assignments.items() for arg in ("-S", f"{key}={override(value)}")]
    dvc(root, "exp", "run", "--queue", "--name", name, *overrides)


def queue_remove(root: Path, names: list[str]) -> None:
    """Take experiments that have not started off the queue (a sweep that failed while queueing)."""
    if names:
        dvc(root, "queue", "remove", *names, check=False)


def queue_start(root: Path, workers: int, env: dict) -> None:
    """Start queue workers (`dvc queue start --jobs N`). They inherit `env` (tracking settings)
    with the venv first on PATH: DVC's worker runs `dvc` from PATH and the stages `bert4rec`
    (the temporary copy an experiment runs in has no .venv)."""
    env = {**env, "PATH": os.pathsep.join([str(Path(dvc_executable()).parent), env.get("PATH", "")])}
    args = [dvc_executable(), "queue", "start", "--jobs", str(workers)]
    # The workers are daemons that keep the descriptors they were started with: a pipe would keep
    # anyone reading it (our caller, `make ... | tee`) waiting until the last worker exits.
    with tempfile.TemporaryFile("w+") as output:
        result = subprocess.run(args, cwd=root, env=env, text=True, stdin=subprocess.DEVNULL,
                                stdout=output, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            output.seek(0)
            raise UserError(f"`dvc queue start` failed (exit {result.returncode}): {output.read().strip()}")


def queue_status(root: Path) -> tuple[dict[str, str], int]:
    """(status by experiment name: Queued/Running/Success/Failed, number of live workers)."""
    lines = dvc(root, "queue", "status").stdout.splitlines()
    statuses, workers = {}, 0
    for line in lines:
        parts = line.split()
        if line.startswith("Worker status:"):  # "Worker status: 1 active, 0 idle"
            workers = sum(int(word) for word in parts if word.isdigit())
        elif len(parts) >= 3 and parts[-1] in ("Queued", "Running", *QUEUE_DONE):
            statuses[parts[1]] = parts[-1]
    return statuses, workers


def queue_follow(root: Path, name: str, env: dict | None = None) -> None:
    """Stream a running experiment's output until it ends (`dvc queue logs --follow`)."""
    dvc(root, "queue", "logs", "--follow", name, check=False, capture=False, env=env)


@dataclass(frozen=True)
class Experiment:
    name: str
    rev: str  # the experiment's commit
    baseline: str  # the commit it was run from


def experiments(root: Path) -> dict[str, Experiment]:
    """Every finished DVC experiment of the repository by name (refs/exps/<baseline>/<name>)."""
    refs = git(root, "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps").stdout.splitlines()
    found = {}
    for line in refs:
        rev, ref = line.split(" ", 1)
        parts = ref.split("/")
        if len(parts) == 5 and len(parts[2]) == 2 and len(parts[3]) == 38:
            found[parts[4]] = Experiment(parts[4], rev, parts[2] + parts[3])
    return found


def read_at(root: Path, rev: str, path: str) -> str | None:
    """A file as it is in a commit: git-tracked, or a DVC output read from the cache (None if absent)."""
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        return dvc.api.read(path, repo=str(root), rev=rev)
    except (DvcException, FileNotFoundError):
        return None


def exp_apply(root: Path, name: str) -> None:
    """Make an experiment's params, dvc.lock and outputs the workspace's (`dvc exp apply`)."""
    dvc(root, "exp", "apply", name)
