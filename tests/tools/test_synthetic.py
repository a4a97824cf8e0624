import numpy as np
import pytest

from bert4rec.tools import synthetic
from bert4rec.errors import UserError


def test_same_seed_same_bytes(tmp_path):
    for fmt, name in [("sequence_lines", "a.txt.gz"), ("csv", "a.csv"), ("parquet", "a.parquet")]:
        first = synthetic.write(synthetic.generate(seed=3), tmp_path / f"1{name}", fmt).read_bytes()
        second = synthetic.write(synthetic.generate(seed=3), tmp_path / f"2{name}", fmt).read_bytes()
        assert first == second
    assert not synthetic.generate(seed=3).equals(synthetic.generate(seed=4))


def test_structure_is_realistic():
    events = synthetic.generate(users=2000, items=500, mean_length=30, seed=0, follow_prob=0.7)
    users, items, times = (events[c].to_numpy() for c in ("user", "item", "timestamp"))
    counts = np.bincount(items, minlength=501)[1:]
    top = np.sort(counts)[::-1]
    assert top[:50].sum() > 0.3 * len(items)  # popularity skew: 10% of items, >30% of events
    lengths = np.bincount(users)[1:]
    assert lengths.min() >= 3 and lengths.max() > 4 * np.median(lengths)  # long tail
    same_user = users[1:] == users[:-1]
    assert (np.diff(times)[same_user] >= 0).all()  # time ordered within a user
    assert (np.diff(times)[same_user] == 0).any()  # with ties, as real logs have
    pairs = items[:-1][same_user] * 1000 + items[1:][same_user]
    _, pair_counts = np.unique(pairs, return_counts=True)
    # item-to-item transitions: a few successors dominate what follows an item
    assert np.sort(pair_counts)[::-1][: 3 * 500].sum() > 0.5 * same_user.sum()


def test_bad_arguments():
    with pytest.raises(UserError):
        synthetic.generate(users=0)
    with pytest.raises(UserError, match="unknown format"):
        synthetic.write(synthetic.generate(users=2), "x.xyz", "xyz")
