"""Projects: create `projects/<name>/`, make one active, switch between them.

DVC reads parameters from the root `params.yaml` (that is what `dvc exp run -S key=value`
edits) and records one `dvc.lock` beside the root `dvc.yaml`. So the active project's
parameters live in the root `params.yaml` (its `projects/<name>/params.yaml` is a symlink to
it) and an inactive project keeps them, with its lock file, in its own folder. Switching moves
those two small files; data, models and results are never touched. (A root params.yaml that is
a symlink into the project does not work: DVC reads git revisions without following symlinks,
so `dvc params diff` and `dvc exp show` break.)
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import yaml

from bert4rec.errors import UserError
from bert4rec.fileio import atomic_file, restore_on_failure
from bert4rec.params import Params, default_model_name, dump_params, load_params, merge, parse_params, set_dotted
from bert4rec.paths import ProjectPaths
from bert4rec.workflow import dvcyaml, vcs

ACTIVE = Path("config") / "active_project"
ROOT_PARAMS = Path("params.yaml")
ROOT_LOCK = Path("dvc.lock")
PROJECT_LOCK = Path("config") / "pipeline.lock"  # an inactive project's dvc.lock
LINK_TARGET = Path("..") / ".." / "params.yaml"
FOLDERS = ("data/external", "data/interim", "data/processed", "references", "models", "results", "config")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
NAME_LENGTH = 100
RESERVED_INPUT_NAMES = (".gitignore", ".dvcignore", "dvc.yaml", "dvc.lock", "params.yaml")  # git's or DVC's own


def projects(root: Path) -> list[str]:
    folder = root / "projects"
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def project_dir(root: Path, name: str) -> Path:
    if not NAME.match(name or "") or len(name) > NAME_LENGTH:
        raise UserError(f"project name '{name[:NAME_LENGTH + 20]}': use letters, digits, '_', '-' or '.', "
                        f"at most {NAME_LENGTH} characters")
    return root / "projects" / name


def require_project(root: Path, name: str) -> Path:
    folder = project_dir(root, name)
    if not folder.is_dir():
        known = ", ".join(projects(root)) or "none yet"
        raise UserError(
            f"unknown project '{name}' ({folder} not found); existing projects: {known}. "
            "Create one with `make project NAME=<name> DATA=<file>`"
        )
    return folder


def active_name(root: Path) -> str:
    marker = root / ACTIVE
    if not marker.exists():
        raise UserError(
            f"{marker}: no active project; create one with `make project NAME=<name> DATA=<file>` "
            "or activate one with `make use NAME=<name>`"
        )
    name = marker.read_text().strip()
    if not NAME.match(name) or not (root / "projects" / name).is_dir():
        raise UserError(f"{marker}: names '{name}', not one of the projects ({', '.join(projects(root)) or 'none yet'}); "
                        "activate one with `make use NAME=<name>`")
    return name


def load_active(root: Path) -> tuple[str, Params]:
    name = active_name(root)
    return name, load_params(root / ROOT_PARAMS)


def active_paths(root: Path) -> ProjectPaths:
    return ProjectPaths(root / "projects" / active_name(root))


def params_file(root: Path, name: str) -> Path:
    """Where a project's parameters live now: the root file when it is active."""
    marker = root / ACTIVE
    if marker.exists() and marker.read_text().strip() == name:
        return root / ROOT_PARAMS
    return project_dir(root, name) / "params.yaml"


def _write_text(path: Path, text: str) -> None:
    if path.is_symlink():
        path.unlink()
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def parse_assignments(items: list[str]) -> dict:
    """`section.key=value` pairs (values parsed as YAML) into a nested mapping."""
    nested: dict = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item}: expected section.key=value")
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or "not a YAML value"
            raise UserError(f"--set {item}: the value is not valid YAML ({problem}); quote text, e.g. "
                            f"{key}='\"...\"'") from None
        set_dotted(nested, key.strip(), value, f"--set {item}")
    return nested


def update_params(root: Path, name: str, updates: dict) -> Params:
    """Apply updates to a project's parameters (validated first, so a bad value changes nothing)."""
    path = params_file(root, name)
    data = yaml.safe_load(path.read_text()) or {}
    params = parse_params(merge(data, updates), str(path))
    _write_text(path, dump_params(params))
    return params


def _deactivate(root: Path, name: str) -> None:
    folder = project_dir(root, name)
    _write_text(folder / "params.yaml", (root / ROOT_PARAMS).read_text())
    lock = root / ROOT_LOCK
    if lock.exists():
        (folder / PROJECT_LOCK).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(lock, folder / PROJECT_LOCK)


def activate(root: Path, name: str) -> Params:
    """Make `name` the active project: root params.yaml/dvc.lock are its, dvc.yaml rendered.
    All or nothing: if anything fails, every file it touched is as it was."""
    folder = require_project(root, name)
    marker = root / ACTIVE
    current = marker.read_text().strip() if marker.exists() else None
    touched = [root / ROOT_PARAMS, root / ROOT_LOCK, marker, root / dvcyaml.DVC_YAML]
    for project in {name, current} - {None}:
        if (root / "projects" / project).is_dir():
            touched += [root / "projects" / project / "params.yaml", root / "projects" / project / PROJECT_LOCK]
    with restore_on_failure(touched):
        return _activate(root, name, folder, current)


def _activate(root: Path, name: str, folder: Path, current: str | None) -> Params:
    own = folder / "params.yaml"
    marker = root / ACTIVE
    if current == name:
        params = load_params(root / ROOT_PARAMS)
    else:
        if not own.exists() or own.is_symlink():
            raise UserError(f"{own}: project parameters not found")
        params = load_params(own)  # validate before moving anything
        if current and (root / "projects" / current).is_dir():
            if not (root / ROOT_PARAMS).exists():
                raise UserError(f"{root / ROOT_PARAMS}: missing; it holds the active project {current}'s parameters "
                                "(bring it back with `git checkout -- params.yaml`), then switch")
            _deactivate(root, current)
        _write_text(root / ROOT_PARAMS, own.read_text())
        own.unlink()
        own.symlink_to(LINK_TARGET)
        lock = folder / PROJECT_LOCK
        if lock.exists():
            shutil.move(lock, root / ROOT_LOCK)
        else:
            (root / ROOT_LOCK).unlink(missing_ok=True)
        _write_text(marker, name + "\n")
    declared = {k for section in Params.model_fields for k in dvcyaml.section_keys(params, section)}
    missing = declared - _flat_keys(yaml.safe_load((root / ROOT_PARAMS).read_text()))
    if missing:  # DVC needs every key a stage declares to be present in the file
        _write_text(root / ROOT_PARAMS, dump_params(params))
    return render_pipeline(root, name, params)


def render_pipeline(root: Path, name: str, params: Params) -> Params:
    """Write dvc.yaml for the active project, first pinning train_val.model_name in params.yaml:
    the name must not change when a hyperparameter does, or the declared model folder would
    no longer match. All or nothing, for every caller (make, promote, sweep, switch)."""
    pinned = params.train_val.model_name is None
    with restore_on_failure([params_file(root, name), root / dvcyaml.DVC_YAML]):
        if pinned:
            params = update_params(root, name, {"train_val": {"model_name": default_model_name(params)}})
        dvcyaml.write(root, name, params)
    if pinned:  # said only once it holds: a failed render puts params.yaml back
        print(f"params.yaml: train_val.model_name set to {params.train_val.model_name}")
    return params


def _flat_keys(data, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in (data or {}).items():
        if isinstance(value, dict):
            keys |= _flat_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def create(root: Path, name: str, data: Path, settings: dict | None = None) -> ProjectPaths:
    """Scaffold projects/<name>/, put the input under DVC, write params, make it active."""
    vcs.require_repo(root)
    folder = project_dir(root, name)
    if folder.exists():
        raise UserError(f"{folder}: project already exists; switch to it with `make use NAME={name}`")
    data = Path(data)
    if not data.is_file():
        raise UserError(f"{data}: input file not found")
    if data.name in RESERVED_INPUT_NAMES or data.name.endswith(".dvc"):
        raise UserError(f"{data}: git or DVC uses the name '{data.name}' for its own files; rename the input")
    defaults = Params().model_dump(mode="json")
    base = {"raw": {"input": f"data/external/{data.name}"}}
    params = parse_params(merge(merge(defaults, base), settings or {}), "project parameters")
    first = not folder.parent.exists()
    try:
        for sub in FOLDERS:
            (folder / sub).mkdir(parents=True, exist_ok=True)
        target = folder / "data" / "external" / data.name
        shutil.copyfile(data, target)
        vcs.dvc_add(root, target)
        with atomic_file(folder / "params.yaml") as tmp:
            tmp.write_text(dump_params(params))
        activate(root, name)
    except BaseException:
        shutil.rmtree(folder.parent if first else folder, ignore_errors=True)
        raise
    return ProjectPaths(folder)


def main_project(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bert4rec project", description="create projects/<name>/ from an input file and make it active"
    )
    parser.add_argument("name")
    parser.add_argument("data", type=Path, help="input file (copied to data/external and tracked by DVC)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a parameter for the new project (repeatable), e.g. train_val.num_train_steps=500")
    args = parser.parse_args(argv)
    root = Path.cwd()
    settings = parse_assignments(args.set)
    vcs.hold_repository(root, "`make project`")
    paths = create(root, args.name, args.data, settings)
    print(f"project {args.name} created in {paths.root.relative_to(root)} and active")
    print(f"  parameters: params.yaml (linked from {paths.params.relative_to(root)})")
    print("  next: `make raw` ... `make inference`, or `dvc repro inference`")
    return 0


def main_use(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bert4rec use", description="make an existing project the active one")
    parser.add_argument("name", nargs="?", help="project name; without it, list the projects")
    args = parser.parse_args(argv)
    root = Path.cwd()
    if args.name is None:
        marker = root / ACTIVE
        current = marker.read_text().strip() if marker.exists() else None
        for name in projects(root):
            print(("* " if name == current else "  ") + name)
        if not projects(root):
            print(f"no projects in {root / 'projects'}; create one with `make project NAME=<name> DATA=<file>`")
        return 0
    vcs.hold_repository(root, "`make use`")
    params = activate(root, args.name)
    print(f"active project: {args.name} (model {params.model_name()}); dvc.yaml regenerated")
    return 0


def main_pipeline(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bert4rec pipeline", description="render dvc.yaml for the active project")
    parser.add_argument("--item-predictions", action=argparse.BooleanOptionalAction, default=None,
                        help="include the inference item-predictions output (sets inference.item_predictions)")
    parser.add_argument("--user-embeddings", action=argparse.BooleanOptionalAction, default=None,
                        help="include the inference user-embeddings output (sets inference.user_embeddings)")
    args = parser.parse_args(argv)
    root = Path.cwd()
    vcs.hold_repository(root, "`make pipeline`")
    name = active_name(root)
    updates = {k: v for k, v in (("item_predictions", args.item_predictions),
                                 ("user_embeddings", args.user_embeddings)) if v is not None}
    with restore_on_failure([root / ROOT_PARAMS, root / dvcyaml.DVC_YAML]):
        params = update_params(root, name, {"inference": updates}) if updates else load_active(root)[1]
        params = render_pipeline(root, name, params)
    print(f"wrote dvc.yaml for project {name} (model {params.model_name()})")
    return 0
