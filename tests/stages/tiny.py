"""A learnable synthetic project and helpers around the tiny model the stage tests share."""

from bert4rec.data.manifest import Manifest
from bert4rec.model import recommend
from bert4rec.tools import synthetic
from helpers import make_project, run_stage

TINY = {
    "model_name": "tiny",
    "objective": "masked",  # the causal objective has tests of its own (test_train_val.py)
    "model": {"hidden_size": 32, "intermediate_size": 64, "max_position_embeddings": 20,
              "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    "batch_size": 32, "num_train_steps": 600, "num_warmup_steps": 30, "learning_rate": 0.003,
    "eval_every_steps": 200, "save_checkpoints_steps": 200, "log_every_steps": 100, "keep_checkpoints": 2,
    "early_stopping_patience": 0, "length_buckets": 1,
    "weight_decay": 0.01,  # the tiny model's margins were set at these two; the defaults are tuned for ML-1M
}
TFRECORD = {"max_seq_length": 20, "max_predictions_per_seq": 4, "num_shards": 2, "pool_size": 1, "prop_sliding_window": 0.5}
USERS = 400


def model_dir(project, name="tiny"):
    return project / "models" / name


def new_project(root, **train_val):
    """A synthetic log with a strong successor pattern (what BERT4Rec can learn, most-popular can't)."""
    data = root / "events.txt"
    table = synthetic.generate(users=USERS, items=200, mean_length=25, seed=3, follow_prob=0.9, successors=1, zipf=0.5)
    synthetic.write(table, data, "sequence_lines")
    project = make_project(root / "projects" / "synth", data, tfrecord=TFRECORD, train_val={**TINY, **train_val},
                           test={"per_user_ranks": True, "sampled_negatives": 20},
                           inference={"user_embeddings": True, "top_k": 5})
    assert run_stage("raw", project) == 0 and run_stage("tfrecord", project) == 0
    return project


def most_popular_valid_ndcg(project):
    manifest = Manifest.read(project / "data" / "processed" / "records")
    baseline = recommend.PopularityRecommender(recommend.history_popularity(manifest, "valid"))
    return recommend.evaluate({"popular": baseline}, manifest, "valid", 512)["popular"].result()["ndcg_at_10"]
