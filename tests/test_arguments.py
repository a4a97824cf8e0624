"""Counts, durations and ports out of range are refused before a command does any work."""

from __future__ import annotations

import argparse

import pytest

from bert4rec import arguments, cli


@pytest.mark.parametrize("kind, text, value", [
    (arguments.at_least_one, "3", 3), (arguments.not_negative, "0", 0), (arguments.positive, "0.5", 0.5),
    (arguments.catalogue_size, "2", 2), (arguments.port, "65535", 65535),
])
def test_values_in_range_pass(kind, text, value):
    assert kind(text) == value


@pytest.mark.parametrize("kind, text, expected", [
    (arguments.at_least_one, "0", "an integer >= 1"), (arguments.at_least_one, "1.5", "an integer >= 1"),
    (arguments.not_negative, "-1", "an integer >= 0"), (arguments.positive, "0", "a number > 0"),
    (arguments.positive, "-2", "a number > 0"), (arguments.positive, "nan", "a number > 0"),
    (arguments.positive, "inf", "a number > 0"), (arguments.positive, "ten", "a number > 0"),
    (arguments.catalogue_size, "1", "an integer >= 2 and <= 50000000"), (arguments.population, "0", "an integer >= 1 and <= 50000000"),
    (arguments.mean_length, "0.5", "a number >= 1"), (arguments.longest_history, "2", "an integer >= 3"), (arguments.port, "0", "an integer >= 1 and <= 65535"),
    (arguments.port, "99999", "an integer >= 1 and <= 65535"),
])
def test_values_out_of_range_are_named(kind, text, expected):
    with pytest.raises(argparse.ArgumentTypeError, match=f"expected {expected}, got '{text}'"):
        kind(text)


@pytest.mark.parametrize("command", [
    ["bench-quality", "--minutes", "0"], ["bench-speed", "--steps", "0"], ["bench-speed", "--warmup", "-1"],
    ["bench-speed", "--rounds", "0"], ["bench-data", "--users", "0"], ["bench-scale", "--minutes", "5", "-1"],
    ["bench-finetune", "--seconds", "-1"], ["bench-inference", "--rounds", "0"],
    ["bench-inference", "--train-minutes", "0"], ["bench-scale", "--users", "10", "20", "30", "--minutes", "5", "10"], ["ui", "--port", "99999"], ["sweep", "lr_mask", "--workers", "0"],
])
def test_commands_refuse_them_before_any_work(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    option = [word for word in command if word.startswith("--")][-1]
    with pytest.raises(SystemExit) as stopped:
        cli.main([*command, "--work", str(tmp_path / "work")] if command[0].startswith("bench") else command)
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: argument {option}: expected"), lines  # no usage dump
    assert list(tmp_path.iterdir()) == []


def test_synth_never_writes_over_a_folder(tmp_path, capsys):
    folder = tmp_path / "precious"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "keep.txt").write_text("keep")
    assert cli.main(["synth", str(folder), "--users", "3"]) == 2
    assert "precious: is a folder; expected a file to write (nothing was written or removed)" in capsys.readouterr().err
    assert (folder / "sub" / "keep.txt").read_text() == "keep"
