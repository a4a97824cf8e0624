"""Sweep files: grid and random points, validated like params; every mistake is one line."""

import pytest
import yaml

from bert4rec.errors import UserError
from bert4rec.params import Params
from bert4rec.workflow import sweepfile

BASE = Params(train_val={"model_name": "m"})


def plan(tmp_path, content: dict | str, name: str = "s", base: Params = BASE) -> sweepfile.Plan:
    folder = tmp_path / "config" / "sweeps"
    folder.mkdir(parents=True, exist_ok=True)
    text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    (folder / f"{name}.yaml").write_text(text)
    return sweepfile.plan(tmp_path, name, base)


def error(tmp_path, content) -> str:
    with pytest.raises(UserError) as caught:
        plan(tmp_path, content)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def test_grid_points_are_every_combination_in_file_order(tmp_path):
    result = plan(tmp_path, {"grid": {"train_val.learning_rate": [0.001, 0.003], "tfrecord.masked_lm_prob": [0.2, 0.4]},
                             "set": {"train_val.num_train_steps": 50}, "max_points": 4})
    assert result.points == [
        {"train_val.num_train_steps": 50, "train_val.learning_rate": lr, "tfrecord.masked_lm_prob": mask}
        for lr in (0.001, 0.003) for mask in (0.2, 0.4)]
    assert result.varied == ["train_val.learning_rate", "tfrecord.masked_lm_prob"]
    assert result.fixed == {"train_val.num_train_steps": 50}
    assert result.file == "config/sweeps/s.yaml"


def test_values_come_back_typed_as_the_params_declare_them(tmp_path):
    result = plan(tmp_path, {"grid": {"train_val.num_train_steps": ["100", 200], "train_val.model.hidden_act": ["relu"]}})
    assert [p["train_val.num_train_steps"] for p in result.points] == [100, 200]
    assert result.fixed == {"train_val.model.hidden_act": "relu"}  # one value: the same in every point


def test_random_draws_are_seeded_and_paired_with_every_grid_point(tmp_path):
    content = {"grid": {"train_val.batch_size": [32, 64]}, "seed": 7,
               "random": {"samples": 3, "params": {
                   "train_val.learning_rate": {"log_uniform": [1e-4, 1e-2]},
                   "train_val.model.hidden_dropout_prob": {"uniform": [0.0, 0.3]},
                   "train_val.num_warmup_steps": {"int_uniform": [10, 20]},
                   "train_val.model.hidden_act": {"choice": ["gelu", "relu"]}}}}
    first, again = plan(tmp_path, content), plan(tmp_path, content)
    assert first.points == again.points and len(first.points) == 6
    draws = [{k: v for k, v in p.items() if k != "train_val.batch_size"} for p in first.points]
    assert draws[:3] == draws[3:]  # the same three draws for each grid value
    for point in first.points:
        assert 1e-4 <= point["train_val.learning_rate"] <= 1e-2
        assert 0.0 <= point["train_val.model.hidden_dropout_prob"] <= 0.3
        assert point["train_val.num_warmup_steps"] in range(10, 21)
        assert point["train_val.model.hidden_act"] in ("gelu", "relu")
    other = plan(tmp_path, {**content, "seed": 8})
    assert other.points != first.points


def test_a_draw_that_repeats_an_earlier_one_is_drawn_again(tmp_path):
    content = {"seed": 0, "random": {"samples": 4, "params": {"train_val.model.hidden_size": {"choice": [16, 32]},
                                                             "train_val.model.hidden_act": {"choice": ["gelu", "relu"]}}}}
    points = plan(tmp_path, content).points
    assert len(points) == 4 and len({tuple(sorted(p.items())) for p in points}) == 4


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    message = error(tmp_path, {"grid": {"train_val.learnin_rate": [0.1]}})
    assert message == ("config/sweeps/s.yaml: grid: unknown key 'train_val.learnin_rate' (not a parameter in "
                       "src/bert4rec/params.py); did you mean 'train_val.learning_rate'?")


@pytest.mark.parametrize("content, expected", [
    ({"grid": {}}, "config/sweeps/s.yaml: the grid is empty and there is no random search: nothing to sweep"),
    ({"grid": {"train_val.learning_rate": []}}, "config/sweeps/s.yaml: grid: 'train_val.learning_rate' has no values"),
    ({"grid": {"train_val.learning_rate": [0.1, 0.2, 0.3], "train_val.batch_size": [8, 16]}, "max_points": 5},
     "config/sweeps/s.yaml: 6 points (3 x 2) exceed max_points 5; raise max_points or shrink the sweep"),
    ({"random": {"samples": 20, "params": {"train_val.learning_rate": {"uniform": [0.1, 0.2]}}}},
     "config/sweeps/s.yaml: 20 points (20 draws) exceed max_points 16; raise max_points or shrink the sweep"),
    ({"grids": {"train_val.learning_rate": [0.1]}}, "config/sweeps/s.yaml: unknown key 'grids'"),
    ({"grid": {"train_val.model": [1]}}, "config/sweeps/s.yaml: grid: 'train_val.model' is a section; name a key "
                                         "inside it (e.g. train_val.model.attention_probs_dropout_prob)"),
    ({"grid": {"train_val.model_name": ["a", "b"]}}, "config/sweeps/s.yaml: grid: 'train_val.model_name' cannot be "
                                                     "swept: every point must write the model folder the pipeline declares"),
    ({"grid": {"train_val.learning_rate": [0.1, 0.1]}}, "config/sweeps/s.yaml: grid: 'train_val.learning_rate' lists 0.1 twice"),
    ({"grid": {"train_val.learning_rate": [0.1]}, "set": {"train_val.learning_rate": 0.2}},
     "config/sweeps/s.yaml: 'train_val.learning_rate' appears in more than one of grid, random.params and set"),
    ({"random": {"samples": 2, "params": {"train_val.learning_rate": {"uniform": [0.2, 0.1]}}}},
     "config/sweeps/s.yaml: random.params: 'train_val.learning_rate': uniform: low (0.2) must be below high (0.1)"),
    ({"random": {"samples": 2, "params": {"train_val.learning_rate": {"uniform": [0.1, 0.2], "choice": [1]}}}},
     "config/sweeps/s.yaml: random.params: 'train_val.learning_rate': give exactly one of choice, uniform, "
     "log_uniform, int_uniform (got choice, uniform)"),
    ({"random": {"samples": 2, "params": {"train_val.learning_rate": {"log_uniform": [0.0, 0.1]}}}},
     "config/sweeps/s.yaml: random.params: 'train_val.learning_rate': log_uniform: low (0.0) must be above 0"),
    ("grid: [1, 2", None),
    ("- 1\n- 2\n", "config/sweeps/s.yaml: expected a mapping with grid and/or random (README: Sweeps)"),
    ("grid:\n  train_val.batch_size: [8]\ngrid:\n  train_val.batch_size: [16]\n",
     "config/sweeps/s.yaml: line 3: duplicate key 'grid' (first given on line 1); give each key once"),
    ("grid:\n  train_val.num_train_steps: [true, 20]\n", "train_val.num_train_steps: expected a number (got True)"),
    ("grid:\n  train_val.num_train_steps: [1, true]\n", "train_val.num_train_steps: expected a number (got True)"),
    ({"random": {"samples": 3, "params": {"train_val.model.hidden_act": {"choice": ["gelu", "relu"]}}}},
     "config/sweeps/s.yaml: random: 150 draws gave only 2 different points for samples: 3; lower samples"),
    ({"random": {"samples": 2, "params": {"train_val.num_train_steps": {"choice": [20, "20"]}}}},
     "config/sweeps/s.yaml: random: 100 draws gave only 1 different points for samples: 2"),
    ({"random": {"samples": 2, "params": {"train_val.num_train_steps": {"choice": [1, True]}}}},
     "train_val.num_train_steps: expected a number (got True)"),
    ("grid:\n  train_val.num_train_steps: [20, '20']\n", "config/sweeps/s.yaml: grid: 'train_val.num_train_steps' lists 20 twice once typed ([20, '20'])"),
    ("grid:\n  train_val.learning_rate: [[0.1]]\n",
     "config/sweeps/s.yaml: grid.train_val.learning_rate.0: expected true/false, an integer, a number or text (got [0.1])"),
])
def test_bad_sweep_files_fail_with_one_line(tmp_path, content, expected):
    message = error(tmp_path, content)
    if expected is None:
        assert message.startswith("config/sweeps/s.yaml: not valid YAML at line 1")
    else:
        assert expected in message and "\n" not in message, message


def test_each_point_is_validated_against_the_params(tmp_path):
    message = error(tmp_path, {"grid": {"train_val.learning_rate": [0.001, -1]}})
    assert message == ("config/sweeps/s.yaml: point (train_val.learning_rate=-1): train_val.learning_rate: "
                       "Input should be greater than 0 (got -1)")
    message = error(tmp_path, {"grid": {"train_val.model.hidden_size": [64, 30]}, "set": {"train_val.model.num_attention_heads": 4}})
    assert "point (train_val.model.num_attention_heads=4, train_val.model.hidden_size=30)" in message
    assert "hidden_size (30) must be divisible by num_attention_heads (4)" in message


def test_a_missing_sweep_file_lists_the_known_ones(tmp_path):
    plan(tmp_path, {"grid": {"train_val.learning_rate": [0.1]}}, name="known")
    with pytest.raises(UserError, match=r"^config/sweeps/nope.yaml: sweep file not found; sweeps: known$"):
        sweepfile.plan(tmp_path, "nope", BASE)
