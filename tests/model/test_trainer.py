import pytest

from bert4rec.model import store
from bert4rec.params import TrainValParams
from bert4rec.errors import UserError
from bert4rec.model.trainer import LoopState, learning_rate


def test_warm_up_then_linear_decay_to_zero():
    params = TrainValParams(learning_rate=1e-3, num_warmup_steps=10, num_train_steps=110)
    assert learning_rate(params, 0) == 0.0
    assert learning_rate(params, 5) == pytest.approx(5e-4)
    assert learning_rate(params, 10) == pytest.approx(1e-3)
    assert learning_rate(params, 60) == pytest.approx(5e-4)
    assert learning_rate(params, 110) == 0.0
    assert learning_rate(params, 200) == 0.0


def test_time_limit_drives_the_decay_when_it_runs_out_first():
    params = TrainValParams(learning_rate=1e-3, num_warmup_steps=0, num_train_steps=1000,
                            training_time_limit_seconds=100)
    assert learning_rate(params, 10, elapsed=75) == pytest.approx(2.5e-4)
    assert learning_rate(params, 900, elapsed=10) == pytest.approx(1e-4)
    assert learning_rate(params, 10) == pytest.approx(0.99e-3)


def test_loop_state_round_trip():
    state = LoopState(step=7, epoch=2, batch_in_epoch=3, best_metric=0.25, best_step=5,
                      evals_without_improvement=1, stopped_early=True)
    again = LoopState.from_arrays(state.to_arrays())
    assert (again.step, again.epoch, again.batch_in_epoch, again.best_step) == (7, 2, 3, 5)
    assert again.best_metric == 0.25 and again.evals_without_improvement == 1 and again.stopped_early


def test_checkpoints_keep_the_newest(tmp_path):
    for step in (100, 20, 300, 4000):
        store.save_arrays(tmp_path / f"ckpt-{step}.npz", {"x": [step]})
    store.prune_checkpoints(tmp_path, 2)
    assert [s for s, _ in store.checkpoints(tmp_path)] == [300, 4000]
    (tmp_path / "ckpt-4000.npz").write_bytes(b"\x00" * 10)
    with pytest.raises(UserError, match="ckpt-4000.npz: checkpoint is corrupt"):
        store.load_arrays(tmp_path / "ckpt-4000.npz", "checkpoint")
    with pytest.raises(UserError, match="ckpt-9.npz: checkpoint not found"):
        store.load_arrays(tmp_path / "ckpt-9.npz", "checkpoint")
