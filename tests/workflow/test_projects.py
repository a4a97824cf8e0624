"""Projects, dvc.yaml generation and the user-facing errors around them (no training)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import yaml

from bert4rec.errors import UserError
from bert4rec.params import Params
from bert4rec.tools import demo, synthetic
from bert4rec.workflow import dvcyaml, vcs

from .repo import REPO, free_port


def digest(folder: Path) -> dict[str, str]:
    """Content hash of every file (links as their target) under a folder."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            out[str(path.relative_to(folder))] = "-> " + str(path.readlink())
        elif path.is_file():
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_project_scaffold_and_generated_pipeline(repo, events):
    result = repo.run("bert4rec", "project", "alpha", str(events), "--set", "tfrecord.num_shards=2")
    assert "active" in result.stdout
    project = repo.root / "projects" / "alpha"
    for sub in ("data/external", "data/interim", "data/processed", "references", "models", "results", "config"):
        assert (project / sub).is_dir(), sub
    data = project / "data" / "external" / events.name
    assert data.read_bytes() == events.read_bytes()
    assert yaml.safe_load((project / "data/external" / f"{events.name}.dvc").read_text())["outs"][0]["md5"]
    # parameters: one real file (root params.yaml, what `dvc exp run -S` edits), linked from the project
    assert (project / "params.yaml").is_symlink()
    assert (project / "params.yaml").resolve() == (repo.root / "params.yaml").resolve()
    params = yaml.safe_load((repo.root / "params.yaml").read_text())
    assert params["raw"]["input"] == f"data/external/{events.name}"
    assert params["tfrecord"]["num_shards"] == 2
    assert params["train_val"]["model_name"]
    # data never reaches git: ignored, only the .dvc pointer is committable
    assert repo.git("check-ignore", str(data.relative_to(repo.root)))
    stages = yaml.safe_load((repo.root / "dvc.yaml").read_text())["stages"]
    assert list(stages) == ["raw", "tfrecord", "train_val", "test", "inference"]
    assert stages["raw"]["cmd"].endswith("bert4rec raw --project projects/alpha")
    assert f"projects/alpha/data/external/{events.name}" in stages["raw"]["deps"]
    # code deps follow the imports: a model change re-runs training, not the data stages
    assert {"src/bert4rec/stages/raw.py", "src/bert4rec/data/readers.py"} <= set(stages["raw"]["deps"])
    network = "src/bert4rec/model/network.py"
    assert network in stages["train_val"]["deps"] and network not in stages["tfrecord"]["deps"]
    assert {"src/bert4rec/model/trainer.py", "src/bert4rec/model/recommend.py"} <= set(stages["train_val"]["deps"])
    assert not [d for s in stages.values() for d in s["deps"]
                if d.startswith(("src/bert4rec/workflow", "src/bert4rec/tools")) or d.endswith(("cli.py", "params.py"))]
    # each stage lists only the keys it uses
    assert all(k.startswith("raw.") for k in stages["raw"]["params"])
    assert "tfrecord.pool_size" not in stages["tfrecord"]["params"]  # parallelism, same bytes
    assert "tfrecord.max_seq_length" in stages["tfrecord"]["params"] and "raw.task" in stages["tfrecord"]["params"]
    assert all(k.startswith("train_val.") for k in stages["train_val"]["params"])
    assert "train_val.num_train_steps" in stages["train_val"]["params"]
    assert all(k.startswith("test.") for k in stages["test"]["params"] if k != "train_val.seed")
    model = params["train_val"]["model_name"]
    assert stages["train_val"]["outs"] == [f"projects/alpha/models/{model}"]
    assert stages["test"]["metrics"] == [{f"projects/alpha/results/{model}/test_metrics.json": {"cache": False}}]
    assert stages["inference"]["outs"] == [f"projects/alpha/results/{model}/predictions.parquet"]
    assert stages["raw"]["metrics"] == [{"projects/alpha/data/interim/raw_summary.json": {"cache": False}}]
    # DVC itself accepts the generated pipeline
    dag = repo.run("dvc", "dag", "--md").stdout
    assert "raw" in dag and "inference" in dag


def test_inference_output_switches(repo, events):
    repo.run("bert4rec", "project", "alpha", str(events))
    repo.run("bert4rec", "pipeline", "--user-embeddings", "--no-item-predictions")
    stages = yaml.safe_load((repo.root / "dvc.yaml").read_text())["stages"]
    outs = stages["inference"]["outs"]
    assert len(outs) == 1 and outs[0].endswith("/user_embeddings.parquet")
    params = yaml.safe_load((repo.root / "params.yaml").read_text())
    assert params["inference"]["user_embeddings"] is True and params["inference"]["item_predictions"] is False


def test_render_follows_the_task():
    template = yaml.safe_load((REPO / "config" / "pipeline.yaml").read_text())
    params = Params.model_validate({"raw": {"task": "inference"}, "train_val": {"model_name": "m"}})
    stages = dvcyaml.render("projects/p", params, template, REPO)["stages"]
    assert list(stages) == ["raw", "tfrecord", "inference"]  # nothing to train or evaluate
    assert "projects/p/references/items.parquet" in stages["tfrecord"]["deps"]  # reused, not rebuilt
    assert "projects/p/references/items.parquet" not in stages["tfrecord"]["outs"]


def test_second_project_and_switching_back(repo, events, tmp_path):
    repo.run("bert4rec", "project", "alpha", str(events))
    alpha = repo.root / "projects" / "alpha"
    repo.run("bert4rec", "run", "raw")
    alpha_params = (repo.root / "params.yaml").read_text()
    alpha_lock = (repo.root / "dvc.lock").read_text()
    alpha_outputs = digest(alpha / "data") | digest(alpha / "references")

    other = tmp_path / "other.csv"

    synthetic.write(synthetic.generate(users=50, items=20, mean_length=8, seed=9), other, "csv")
    repo.run("bert4rec", "project", "beta", str(other), "--set", "raw.task=train_val")
    assert (repo.root / "config" / "active_project").read_text().strip() == "beta"
    assert "projects/beta/" in (repo.root / "dvc.yaml").read_text() and "alpha" not in (repo.root / "dvc.yaml").read_text()
    assert not (repo.root / "dvc.lock").exists()
    # alpha's data and outputs are untouched; its parameters and lock now live in its folder
    assert digest(alpha / "data") | digest(alpha / "references") == alpha_outputs
    assert not (alpha / "params.yaml").is_symlink()
    assert (alpha / "params.yaml").read_text() == alpha_params
    assert (alpha / "config" / "pipeline.lock").read_text() == alpha_lock

    listed = repo.run("bert4rec", "use").stdout.split("\n")
    assert "* beta" in listed and "  alpha" in listed
    repo.run("bert4rec", "use", "alpha")
    assert (repo.root / "params.yaml").read_text() == alpha_params
    assert (repo.root / "dvc.lock").read_text() == alpha_lock
    assert yaml.safe_load((repo.root / "projects/beta/params.yaml").read_text())["raw"]["task"] == "train_val"
    status = repo.run("dvc", "status", "raw").stdout
    assert "up to date" in status, status  # alpha's outputs are recognised, nothing re-runs


def test_unknown_project(repo, events):
    result = repo.run("bert4rec", "use", "nope", check=False)
    assert result.returncode == 2
    assert "unknown project 'nope'" in result.stderr and "Traceback" not in result.stderr
    result = repo.run("bert4rec", "raw", "--project", "projects/nope", check=False)
    assert result.returncode == 2 and "projects/nope: project folder not found" in result.stderr
    result = repo.run("bert4rec", "run", "raw", check=False)  # no project at all yet
    assert result.returncode == 2 and "no active project" in result.stderr
    result = repo.run("make", "-s", "raw", check=False)
    assert result.returncode != 0 and "no active project" in result.stderr


def test_project_errors_leave_nothing_behind(repo, events):
    result = repo.run("bert4rec", "project", "alpha", str(events), "--set", "tfrecord.masked_lm_prob=2", check=False)
    assert result.returncode == 2 and "tfrecord.masked_lm_prob" in result.stderr
    assert not (repo.root / "projects" / "alpha").exists() and not (repo.root / "dvc.yaml").exists()
    result = repo.run("bert4rec", "project", "alpha", str(events.with_name("missing.txt")), check=False)
    assert result.returncode == 2 and "missing.txt: input file not found" in result.stderr
    repo.run("bert4rec", "project", "alpha", str(events))
    result = repo.run("bert4rec", "project", "alpha", str(events), check=False)
    assert result.returncode == 2 and "already exists" in result.stderr


def break_raw_stage(repo) -> None:
    """Make rendering dvc.yaml fail: the template names a stage module that does not exist."""
    template = repo.root / "config" / "pipeline.yaml"
    template.write_text(template.read_text().replace("bert4rec.stages.raw", "bert4rec.stages.nowhere"))


def test_a_failed_switch_leaves_the_active_project_as_it_was(repo, events, tmp_path):
    repo.run("bert4rec", "project", "alpha", str(events))
    repo.run("bert4rec", "run", "raw")  # so alpha has a dvc.lock to keep
    (tmp_path / "beta.txt").write_text(events.read_text())
    repo.run("bert4rec", "project", "beta", str(tmp_path / "beta.txt"))
    repo.run("bert4rec", "use", "alpha")
    def state() -> dict[str, str]:
        roots = ("params.yaml", "dvc.lock", "dvc.yaml", "config/active_project")
        return digest(repo.root / "projects") | {name: (repo.root / name).read_text() for name in roots}

    before = state()
    break_raw_stage(repo)
    for command in (("project", "gamma", str(events)), ("use", "beta"), ("pipeline", "--item-predictions")):
        result = repo.run("bert4rec", *command, check=False)
        assert result.returncode == 2 and "bert4rec.stages.nowhere" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert state() == before, command
        assert not (repo.root / "projects" / "gamma").exists()


def test_a_failed_render_leaves_params_yaml_unpinned(repo, events):
    """`make <stage>` pins a missing model name while rendering dvc.yaml; a render that fails
    must not leave the pin behind (nor a half-written dvc.yaml)."""
    repo.run("bert4rec", "project", "alpha", str(events))
    params = yaml.safe_load((repo.root / "params.yaml").read_text())
    del params["train_val"]["model_name"]
    (repo.root / "params.yaml").write_text(yaml.safe_dump(params))
    before = {name: (repo.root / name).read_text() for name in ("params.yaml", "dvc.yaml")}
    break_raw_stage(repo)
    result = repo.run("make", "-s", "raw", check=False)
    assert result.returncode != 0 and "bert4rec.stages.nowhere" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "model_name set to" not in result.stdout
    assert {name: (repo.root / name).read_text() for name in before} == before


def test_invalid_params_stop_before_anything_runs(repo, events):
    repo.run("bert4rec", "project", "alpha", str(events))
    params = yaml.safe_load((repo.root / "params.yaml").read_text())
    params["train_val"]["num_train_steps"] = -5
    (repo.root / "params.yaml").write_text(yaml.safe_dump(params))
    before = repo.commits()
    result = repo.run("make", "-s", "raw", check=False)
    assert result.returncode != 0
    assert "train_val.num_train_steps" in result.stderr and "Traceback" not in result.stderr
    assert repo.commits() == before and not (repo.root / "dvc.lock").exists()


def test_stage_before_its_inputs(repo, events):
    repo.run("bert4rec", "project", "alpha", str(events))
    result = repo.run("bert4rec", "tfrecord", check=False)
    assert result.returncode == 2
    assert "sequences.parquet: sequences not found; run the raw stage first" in result.stderr
    assert not (repo.root / "projects/alpha/data/processed/records").exists()
    result = repo.run("dvc", "repro", "--single-item", "tfrecord", check=False)
    assert result.returncode != 0 and "sequences.parquet" in result.stdout + result.stderr


def test_make_help_lists_every_target():
    text = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    targets = {line.split()[0] for line in text.splitlines() if line.strip()}
    wanted = {"help", "install", "check", "raw", "tfrecord", "train_val", "test", "inference", "project", "use",
              "ui", "demo", "bench-data"}
    clean = {t.replace("\x1b[1m", "").replace("\x1b[0m", "") for t in targets}
    assert wanted <= clean, wanted - clean


def test_demo_checksum_is_verified():
    published = "MD5 (ml-1m.zip) = c4d9eecfca2ab87c1945afe126590906\n"
    assert demo.published_md5(published) == "c4d9eecfca2ab87c1945afe126590906"
    assert demo.published_md5("c4d9eecfca2ab87c1945afe126590906  ml-1m.zip") == "c4d9eecfca2ab87c1945afe126590906"
    with pytest.raises(UserError, match="no MD5"):
        demo.published_md5("<html>not found</html>")
    data = b"ratings"
    demo.verify(data, hashlib.md5(data).hexdigest(), "x")
    with pytest.raises(UserError, match="does not match the published"):
        demo.verify(data + b"!", hashlib.md5(data).hexdigest(), "x")


def test_demo_offline_names_the_url_and_the_local_option(monkeypatch, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/ml-1m.zip.md5"
    monkeypatch.setattr(demo, "CHECKSUM_URL", url)
    with pytest.raises(UserError) as error:
        demo.download(tmp_path)
    assert url in str(error.value) and "DATA=" in str(error.value)


def test_git_push_without_or_with_an_unreachable_remote_carries_on(repo, events):
    repo.run("bert4rec", "project", "alpha", str(events))
    repo.git("remote", "remove", "origin")
    result = repo.run("make", "-s", "raw")
    assert "git: no remote configured; commits stay local" in result.stdout
    assert repo.commits()[0] == "alpha: dvc.lock after `dvc repro raw`"
    missing = repo.root.parent / "gone.git"
    repo.git("remote", "add", "origin", str(missing))
    (repo.root / "params.yaml").write_text((repo.root / "params.yaml").read_text().replace("users_per_chunk: 65536", "users_per_chunk: 1000"))
    result = repo.run("make", "-s", "raw", "F=-f")
    assert f"git: push to origin ({missing}) failed, carrying on" in result.stdout
    assert "Running stage 'raw'" in result.stdout  # F=-f forced it (users_per_chunk alone does not)
    assert "alpha: code/params/pipeline before `dvc repro raw`" in repo.commits()[:2]  # the params change
    assert repo.git("status", "--porcelain") == ""


def test_missing_model_name_is_pinned_when_rendering(repo, events):
    repo.run("bert4rec", "project", "alpha", str(events))
    params = yaml.safe_load((repo.root / "params.yaml").read_text())
    params["train_val"]["model_name"] = None
    params["train_val"]["model"]["hidden_size"] = 32
    (repo.root / "params.yaml").write_text(yaml.safe_dump(params))
    repo.run("bert4rec", "pipeline")
    pinned = yaml.safe_load((repo.root / "params.yaml").read_text())["train_val"]["model_name"]
    assert pinned and "32" in pinned
    stages = yaml.safe_load((repo.root / "dvc.yaml").read_text())["stages"]
    assert stages["train_val"]["outs"] == [f"projects/alpha/models/{pinned}"]


def test_commit_refuses_data_model_and_secret_files(tmp_path):

    root = tmp_path / "r"
    (root / "projects/a/data/external").mkdir(parents=True)
    (root / "src").mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "config", "user.name", "test"], cwd=root, check=True)
    subprocess.run(["git", "config", "user.email", "test@example.com"], cwd=root, check=True)
    (root / "src/code.py").write_text("x = 1\n")
    (root / "projects/a/data/external/ratings.csv").write_text("1,2\n")  # not ignored here on purpose
    (root / "projects/a/data/external/ratings.csv.dvc").write_text("outs: []\n")
    with pytest.raises(UserError, match="refusing to commit data.*ratings.csv"):
        vcs.commit(root, "x")
    staged = subprocess.run(["git", "diff", "--cached", "--name-only"], cwd=root, capture_output=True, text=True).stdout
    assert "projects/a/data/external/ratings.csv" not in staged.split()  # unstaged again
    (root / "projects/a/data/external/ratings.csv").unlink()
    assert vcs.commit(root, "code and pointer")
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True).stdout.split()
    assert files == ["projects/a/data/external/ratings.csv.dvc", "src/code.py"]
