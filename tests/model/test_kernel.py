import logging
import os
import shutil

import numpy as np
import pytest

from bert4rec.model import kernel


@pytest.fixture
def fresh_kernel():
    """group_scan_op() asked again (it is cached per process), then forgotten again."""
    kernel.group_scan_op.cache_clear()
    yield
    kernel.group_scan_op.cache_clear()


def test_the_kernel_builds_on_this_machine():
    if shutil.which(os.environ.get("CXX", "c++")) is None and os.environ.get("CI") != "true":
        pytest.skip("no C++ compiler here: the ranked pass uses TensorFlow's ops")
    assert kernel.group_scan_op() is not None


@pytest.mark.parametrize("batch, width", [(0, 128), (1, 64), (37, 640), (5, 32768)])
def test_one_read_gives_group_maxima_and_counts_at_or_above_the_threshold(batch, width):
    if kernel.group_scan_op() is None:
        pytest.skip("no fused kernel on this machine")
    rng = np.random.default_rng(width)
    scores = np.round(rng.normal(size=(batch, width)), 1).astype(np.float32)  # many ties with the threshold
    scores[:, width - 40:] = -np.inf  # a padded last block
    threshold = np.round(rng.normal(size=(batch, 1)), 1).astype(np.float32)
    if batch > 2:
        scores[2] = -np.inf
        threshold[1] = np.inf
    maxima, count = kernel.group_scan(scores, threshold)
    assert np.array_equal(maxima.numpy(), scores.reshape(batch, width // 64, 64).max(2))
    assert count.numpy().tolist() == (scores >= threshold).sum(1).tolist()


def test_switched_off_it_is_not_built(fresh_kernel, monkeypatch, tmp_path):
    monkeypatch.setenv(kernel.SWITCH, "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert kernel.group_scan_op() is None
    assert not any(tmp_path.iterdir())


def test_a_failing_compiler_means_tensorflow_ops_said_once_and_no_debris(fresh_kernel, monkeypatch, tmp_path,
                                                                        caplog):
    monkeypatch.setenv("CXX", "false")  # a compiler that always fails
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger=kernel.__name__):
        assert kernel.group_scan_op() is None
        assert kernel.group_scan_op() is None
    said = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(said) == 1 and "the compiler failed" in said[0]
    assert [path.name for path in (tmp_path / "bert4rec").iterdir()] == []

