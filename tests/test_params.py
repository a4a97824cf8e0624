import re

import pytest

from bert4rec.params import MIN_HISTORY_BY_TASK, dump_params, load_params, parse_params, set_dotted
from bert4rec.errors import UserError


def test_defaults_round_trip(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(dump_params(parse_params({})))
    assert load_params(path) == parse_params({})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"tfrecord": {"masked_lm_prob": 1.5}}, "tfrecord.masked_lm_prob"),
        ({"tfrecord": {"masked_lm_prob": -0.1}}, "tfrecord.masked_lm_prob"),
        ({"tfrecord": {"max_seq_length": 0}}, "tfrecord.max_seq_length"),
        ({"tfrecord": {"max_seq_lenght": 10}}, "unknown key 'tfrecord.max_seq_lenght'"),
        ({"trian_val": {}}, "unknown key 'trian_val'"),
        ({"tfrecord": {"dupe_factor": "ten"}}, "tfrecord.dupe_factor"),
        ({"tfrecord": {"prop_sliding_window": 0}}, "tfrecord.prop_sliding_window"),
        ({"tfrecord": {"max_seq_length": 10, "max_predictions_per_seq": 20}}, "max_predictions_per_seq"),
        ({"raw": {"task": "predict"}}, "raw.task"),
        ({"raw": {"drop_consecutive_repeats": "maybe"}}, "raw.drop_consecutive_repeats"),
        ({"raw": {"split": "time", "validation_start": "1998-02-01", "test_start": "1998-03-01",
                  "test_end": "1998-01-01"}}, "raw.test_end: must be after raw.test_start"),
        ({"raw": {"split": "time", "data_start": "tomorrow"}}, "raw.data_start"),
        ({"train_val": {"finetune_schedule": [{"train": ["head"], "steps": 5}, {"train": ["blocks"], "steps": 5}]}},
         "train_val.finetune_schedule.1.train: unknown part(s) ['blocks']"),
        ({"train_val": {"finetune_schedule": [{"train": ["block_2"], "steps": 5}]}},
         "finetune_schedule.0.train: ['block_2'] beyond the model's 2 blocks"),
        ({"train_val": {"finetune_schedule": [{"train": ["all"]}]}}, "train_val.finetune_schedule.0.steps"),
        ({"train_val": {"finetune_schedule": []}}, "train_val.finetune_schedule"),
        ({"train_val": {"new_item_init": "zeros"}}, "train_val.new_item_init"),
        ({"train_val": {"batch_size": True}}, "train_val.batch_size: expected a number (got True)"),
        ({"train_val": {"learning_rate": float("inf")}}, "train_val.learning_rate"),
        ({"train_val": {"seed": 2**32}}, "train_val.seed"),
        ({"train_val": {"model_name": "../other"}}, "train_val.model_name: expected a folder name"),
        ({"raw": {"columns": {"user": True}}}, "raw.columns.user: expected a column name or a 0-based column position"),
    ],
)
def test_invalid_params_name_the_key(data, message):
    with pytest.raises(UserError, match=re.escape(message)):
        parse_params(data, "params.yaml")


def test_time_split_dates_and_parent_kinds():
    raw = parse_params({"raw": {"split": "time", "validation_start": "1998-03-15", "test_start": "1998-04-01T06:00:00"}}).raw
    assert raw.min_length() == 1 and raw.test_start.hour == 6 and raw.data_start is None
    assert parse_params({"train_val": {"init_from": "models:/base/3"}}).train_val.init_from_uri()
    assert not parse_params({"train_val": {"init_from": "../pre/models/base"}}).train_val.init_from_uri()


def test_boolean_strings_are_not_truthy():
    # the predecessor's type=bool made "False" mean True
    assert parse_params({"raw": {"drop_consecutive_repeats": "false"}}).raw.drop_consecutive_repeats is False


def test_min_length_follows_task():
    for task, expected in MIN_HISTORY_BY_TASK.items():
        assert parse_params({"raw": {"task": task}}).raw.min_length() == expected
    assert parse_params({"raw": {"min_history_length": 5}}).raw.min_length() == 5


def test_load_params_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("raw: [unclosed")
    with pytest.raises(UserError, match="not valid YAML"):
        load_params(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="expected a mapping"):
        load_params(listed)


def test_a_dotted_key_sets_a_nested_value_and_names_a_key_that_is_not_a_section():
    data = {"train_val": {"batch_size": 8}}
    set_dotted(data, "train_val.model.hidden_size", 32, "--set")
    assert data == {"train_val": {"batch_size": 8, "model": {"hidden_size": 32}}}
    with pytest.raises(UserError, match=r"^--set x: 'batch_size' in train_val.batch_size.x is not a section$"):
        set_dotted(data, "train_val.batch_size.x", 1, "--set x")
