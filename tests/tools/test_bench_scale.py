"""bench-scale's checks before it generates or trains anything."""

from __future__ import annotations

import pytest

from bert4rec.errors import UserError
from bert4rec.tools import bench_scale


def test_reusing_models_no_earlier_run_trained_is_refused_and_leaves_nothing(tmp_path):
    with pytest.raises(UserError, match="no earlier run at 250,000 users.*run bert4rec bench-scale --users 250000 first"):
        bench_scale.main(["--reuse-model", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "scale.json")])
    assert list(tmp_path.iterdir()) == []
