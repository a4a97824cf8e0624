"""Argument types for the commands' parsers: a count, a duration or a port out of range is refused
by argparse ("argument --steps: expected an integer >= 1, got '0'", exit 2) before any work
starts, instead of failing later with a traceback or half a benchmark on disk."""

from __future__ import annotations

import argparse
import math


def one_line_error(parser: argparse.ArgumentParser, message: str) -> None:
    """argparse's error as the one line every other error is (it printed the usage first)."""
    parser.exit(2, f"error: {message} (`{parser.prog} --help` lists the options)\n")


def _number(text: str, kind: type, least: float, strictly: bool = False, most: float = math.inf):
    name = "an integer" if kind is int else "a number"
    bound = f"> {least:g}" if strictly else f">= {least:g}"
    expected = f"{name} {bound}" + (f" and <= {most:.0f}" if most < math.inf else "")
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got '{text}'") from None
    if not math.isfinite(value) or value < least or (strictly and value == least) or value > most:
        raise argparse.ArgumentTypeError(f"expected {expected}, got '{text}'")
    return value


def at_least_one(text: str) -> int:
    """A count: steps, rounds, users, workers."""
    return _number(text, int, 1)


def not_negative(text: str) -> int:
    """A count that may be zero (warm-up steps)."""
    return _number(text, int, 0)


def positive(text: str) -> float:
    """A duration or a mean: minutes, seconds, events per user."""
    return _number(text, float, 0, strictly=True)


SYNTHETIC_LIMIT = 50_000_000  # users or items of a synthetic log: beyond, more memory than one machine has


def catalogue_size(text: str) -> int:
    """Items in a synthetic catalogue (at least two, so that there is something to rank)."""
    return _number(text, int, 2, most=SYNTHETIC_LIMIT)


def population(text: str) -> int:
    """Users of a synthetic log."""
    return _number(text, int, 1, most=SYNTHETIC_LIMIT)


def mean_length(text: str) -> float:
    """Events per user of a synthetic log, on average (at least one)."""
    return _number(text, float, 1)


def longest_history(text: str) -> int:
    """The cap on a synthetic user's events (at least the shortest, 3)."""
    return _number(text, int, 3)


def port(text: str) -> int:
    return _number(text, int, 1, most=65535)
