import math

from bert4rec.tools import bench_scale


def test_scoring_floor_times_a_catalogue_of_several_blocks_with_a_partial_last_one(monkeypatch):
    monkeypatch.setattr("bert4rec.model.recommend.CHUNK_ITEMS", 256)
    rate = bench_scale.scoring_floor(items=3 * 256 + 17, hidden=8, batch=4, repeats=2)
    assert math.isfinite(rate) and rate > 0
