import json

import pytest

from bert4rec.errors import UserError
from bert4rec.model.distribute import Worker, cluster_worker


def test_the_worker_tf_config_describes(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}))
    assert cluster_worker() == Worker(1, 2, False)


@pytest.mark.parametrize("task", [{"type": "worker", "index": 3}, {"type": "worker", "index": -1},
                                  {"type": "chief", "index": 0}, {"type": "ps", "index": 0}])
def test_a_task_outside_the_cluster_is_refused_before_anything_is_written(monkeypatch, task):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1"]}, "task": task}))
    with pytest.raises(UserError, match="is not in the cluster, which lists 0 chief and 1 worker"):
        cluster_worker()
