"""bench-quality's reading of a run's validation curve."""

from bert4rec.fileio import write_curves
from bert4rec.tools.bench_quality import at_minutes, validation_curve


def test_curve_holds_every_validation_and_the_unaveraged_figure_when_there_is_one(tmp_path):
    rows = {100: {"train_loss": 5.0},
            500: {"valid_ndcg_at_10": 0.14821, "valid_hit_at_10": 0.26, "valid_raw_ndcg_at_10": 0.1466,
                  "train_seconds": 309.0, "sequences_seen": 64000},
            1000: {"valid_ndcg_at_10": 0.17, "valid_hit_at_10": 0.3, "train_seconds": 700.0, "sequences_seen": 128000}}
    write_curves(tmp_path / "results" / "m" / "train_val_curves.csv", rows)
    curve = validation_curve(tmp_path, "m")
    assert curve == [
        {"step": 500, "train_seconds": 309.0, "sequences_seen": 64000, "ndcg_at_10": 0.1482, "hit_at_10": 0.26,
         "raw_ndcg_at_10": 0.1466},
        {"step": 1000, "train_seconds": 700.0, "sequences_seen": 128000, "ndcg_at_10": 0.17, "hit_at_10": 0.3}]
    assert at_minutes(curve, 10)["step"] == 500 and at_minutes(curve, 5) is None
