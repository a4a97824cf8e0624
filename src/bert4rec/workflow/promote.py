"""`make promote [EXP=<name>]`: the best experiment of the newest sweep (by validation NDCG@10;
the test split never chooses), or the named one, becomes the workspace's and the registry's
champion.

`dvc exp apply` makes its params, dvc.lock and outputs the workspace's and they are committed;
`make inference` then runs what the experiment did not (nothing after a sweep, whose points run
the whole pipeline), commits dvc.lock and pushes; its model (the pyfunc its train_val run
logged) becomes a new version of `bert4rec-<project>` in the MLflow Model Registry and the alias
`champion` moves to it. Earlier versions keep their numbers.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from bert4rec.errors import UserError
from bert4rec.params import load_params
from bert4rec.paths import ProjectPaths
from bert4rec.workflow import make, projects, sweeps, tracking, vcs
from bert4rec.workflow.comparison import Row, ordered
from bert4rec.workflow.make import say


@dataclass
class Choice:
    row: Row  # the experiment's validation/test metrics
    experiment: vcs.Experiment
    reason: str


def choose(root: Path, project: str, model_name: str, name: str | None) -> Choice:
    """The named experiment, else the newest sweep's best validation ndcg_at_10."""
    found = vcs.experiments(root)
    if name is not None:
        if name not in found:
            raise UserError(f"unknown experiment '{name}': `dvc exp show -A` lists the finished ones")
        row, _ = sweeps.experiment_row(root, project, model_name, found[name])
        return Choice(row, found[name], "named with EXP")
    record = sweeps.load_record(root, project)
    rows, _ = sweeps.outcomes(root, record)
    best = next((row for row in ordered(rows) if row.valid), None)
    if best is None:
        raise UserError(f"sweep {record.id}: no point finished with validation metrics; nothing to promote")
    return Choice(best, found[best.name], f"best valid ndcg_at_10 of sweep {record.id}")


def check_appliable(root: Path, project: str, experiment: vcs.Experiment) -> None:
    """`dvc exp apply` puts the experiment's tree in the workspace: refuse when that would drop
    uncommitted work or revert commits made since the experiment's baseline, beyond the files an
    experiment is made of (params, dvc.lock, the project's metrics and bookkeeping)."""
    if vcs.is_dirty(root):
        raise UserError("uncommitted changes to tracked files: commit or stash them first "
                        "(`dvc exp apply` replaces the workspace's params, dvc.lock and outputs)")
    own = ("params.yaml", "dvc.lock", f"projects/{project}/data/interim/raw_summary.json",
           f"projects/{project}/config/config_mlflow.yaml")
    changed = [f for f in vcs.changed_files(root, experiment.baseline)
               if f not in own and not f.startswith(f"projects/{project}/results/")]
    if changed:
        listed = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise UserError(f"experiment {experiment.name} ran from commit {experiment.baseline[:10]}; {listed} changed since, "
                        "and applying it would revert that: run the sweep again from HEAD")


def promote(root: Path, name: str | None) -> tracking.Champion:
    vcs.require_repo(root)
    vcs.hold_repository(root, "`make promote`")
    project, params = projects.load_active(root)
    tracking.load_env(root)
    if not tracking.enabled():
        raise UserError(f"promote registers the model in the MLflow Model Registry, but tracking is off "
                        f"({tracking.SWITCH}=off)")
    tracking.check_store(tracking.uri_for_root(root))
    choice = choose(root, project, params.model_name(), name)
    experiment, valid = choice.experiment, choice.row.valid
    check_appliable(root, project, experiment)
    summary = f"valid ndcg_at_10 {valid.ndcg_at_10:.4f}, hit_at_10 {valid.hit_at_10:.4f}" if valid else "no validation metrics"
    say(f"promoting experiment {experiment.name} ({choice.reason}; {summary})")
    vcs.exp_apply(root, experiment.name)
    params = projects.render_pipeline(root, project, load_params(root / projects.ROOT_PARAMS))
    committed = vcs.commit(root, f"{project}: promote experiment {experiment.name} ({choice.reason})")
    say(f"git: committed its params and dvc.lock in {committed[:10]}" if committed else "git: the workspace already held it")
    make.run_stage(root, "inference")  # whatever the experiment did not run; commits and pushes
    tags = {"git_commit": vcs.head_commit(root), "selected_by": choice.reason,
            **({"valid_ndcg_at_10": valid.ndcg_at_10, "valid_hit_at_10": valid.hit_at_10} if valid else {})}
    folder = ProjectPaths(root / "projects" / project).model_dir(params.model_name())
    champion = tracking.register_champion(root, project, experiment.name, folder, tags)
    was = f"was version {champion.previous}, which keeps its number" if champion.previous else "the first champion"
    say(f"registry: {champion.registered_model} version {champion.version} is now @{tracking.REGISTRY_ALIAS} ({was})")
    say(f"load it: mlflow.pyfunc.load_model(\"{champion.uri}\")")
    return champion


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bert4rec promote", description=(
        "apply the best experiment of the newest sweep (validation NDCG@10) or --exp, commit it, run what it "
        "did not, register its model as bert4rec-<project>@champion"))
    parser.add_argument("--exp", help="a DVC experiment name; default: the best of the newest sweep")
    args = parser.parse_args(argv)
    promote(Path.cwd(), args.exp)
    return 0
