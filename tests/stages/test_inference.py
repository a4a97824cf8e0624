"""The inference stage: top-k per user with original ids, user embeddings, the SavedModel export."""

import shutil

import numpy as np
import pandas as pd
import tensorflow as tf

from helpers import run_stage, set_params

from .tiny import USERS, model_dir

run = run_stage


def test_inference_decodes_ids_and_matches_the_saved_model(trained):
    assert run("inference", trained) == 0
    predictions = pd.read_parquet(trained / "results" / "tiny" / "predictions.parquet")
    assert len(predictions) == USERS * 5 and predictions["rank"].tolist()[:5] == [1, 2, 3, 4, 5]
    users_in_index_order = pd.read_parquet(trained / "references" / "users.parquet").sort_values("user_index")
    assert predictions["user_id"].iloc[::5].tolist() == users_in_index_order["user_id"].tolist()
    embeddings = pd.read_parquet(trained / "results" / "tiny" / "user_embeddings.parquet")
    assert len(embeddings) == USERS and len(embeddings["embedding"][0]) == 32
    events = pd.read_csv(trained / "data" / "external" / "events.txt", sep=" ", header=None, names=["user", "item"])
    histories = events.groupby("user", sort=False)["item"].apply(list)
    users = histories.index[:50]
    for user in users[:5]:  # seen items are never recommended; ids are the original ones
        top = predictions[predictions.user_id == user]["item_id"]
        assert not set(top) & set(histories[user])
    served = tf.saved_model.load(str(model_dir(trained) / "saved_model")).signatures["serving_default"]
    width = max(len(histories[u]) for u in users)
    padded = np.full((len(users), width + 3), -1, dtype=np.int64)  # -1: padding / unknown ids
    for row, user in enumerate(users):
        padded[row, -len(histories[user]):] = histories[user]
    out = served(item_ids=tf.constant(padded), k=tf.constant(5))
    expected = predictions.set_index(["user_id", "rank"])["item_id"]
    for row, user in enumerate(users):
        assert out["item_ids"].numpy()[row].tolist() == [expected[(user, r)] for r in range(1, 6)]
    scores = predictions.set_index(["user_id", "rank"])["score"]
    np.testing.assert_allclose(out["scores"].numpy()[0], [scores[(users[0], r)] for r in range(1, 6)], rtol=1e-4)


def test_inference_without_a_trained_model_is_refused(trained, tmp_path, capsys):
    project = tmp_path / "synth"
    shutil.copytree(trained, project, symlinks=True)
    set_params(project, train_val={"model_name": "never-trained"})
    assert run("inference", project) == 2
    assert "no trained model 'never-trained'; run the train_val stage first" in capsys.readouterr().err
    assert not (project / "results" / "never-trained").exists()


def test_a_damaged_vocabulary_copy_in_the_model_is_one_clear_error(trained, tmp_path, capsys):
    import pyarrow.parquet as pq

    project = tmp_path / "synth"
    shutil.copytree(trained, project, symlinks=True)
    items = model_dir(project) / "items.parquet"
    original = pq.read_table(items)
    items.write_text("garbage")
    assert run_stage("inference", project) == 2
    assert "items.parquet: not the model's readable vocabulary copy" in capsys.readouterr().err
    pq.write_table(original.slice(0, 10), items)
    assert run_stage("inference", project) == 2
    assert "items.parquet: 10 items, but model 'tiny' has" in capsys.readouterr().err


def test_an_output_switched_off_does_not_stay_beside_the_new_one(trained, tmp_path):
    project = tmp_path / "synth"
    shutil.copytree(trained, project, symlinks=True)
    results = project / "results" / "tiny"
    assert run_stage("inference", project) == 0
    assert (results / "predictions.parquet").exists() and (results / "user_embeddings.parquet").exists()
    set_params(project, inference={"item_predictions": False})
    assert run_stage("inference", project) == 0
    assert not (results / "predictions.parquet").exists() and (results / "user_embeddings.parquet").exists()


def test_the_pyfunc_recommender_answers_as_inference_whatever_the_batch_and_refuses_bad_input(trained):
    import pytest

    from bert4rec.model import pyfunc

    assert run("inference", trained) == 0
    predictions = pd.read_parquet(trained / "results" / "tiny" / "predictions.parquet")
    expected = predictions.groupby("user_id", sort=False)["item_id"].apply(list)
    events = pd.read_csv(trained / "data" / "external" / "events.txt", sep=" ", header=None, names=["user", "item"])
    histories = events.groupby("user", sort=False)["item"].apply(list)
    users = list(histories.index[:6])
    recommender = pyfunc.HistoryRecommender(model_dir(trained))
    together = recommender.predict(pd.DataFrame({"items": [histories[u] for u in users]}), k=5)
    assert together["items"].tolist() == [expected[u] for u in users]
    alone = [recommender.predict(pd.DataFrame({"items": [histories[u]]}), k=5)["items"][0] for u in users]
    assert alone == together["items"].tolist()
    # ids as the raw stage reads them: '42' is 42, '0042' is no id of this model (ignored, like any unknown id)
    item = histories[users[0]][0]
    empty = recommender.predict(pd.DataFrame({"items": [[]]}), k=5)["items"][0]
    assert recommender.predict(pd.DataFrame({"items": [[str(item)]]}), k=5)["items"][0] == \
        recommender.predict(pd.DataFrame({"items": [[item]]}), k=5)["items"][0]
    assert recommender.predict(pd.DataFrame({"items": [[f"00{item}", 2**70, None and 1]]}), k=5)["items"][0] == \
        recommender.predict(pd.DataFrame({"items": [[0]]}), k=5)["items"][0]
    assert recommender.predict(pd.DataFrame({"items": [None]}), k=5)["items"][0] == empty
    assert recommender.predict(pd.DataFrame({"items": [["--5", "\u00b2", float("nan")]]}), k=5)["items"][0] == empty
    assert recommender.predict(pd.DataFrame({"items": [[float(item)]]}), k=5)["items"][0] == \
        recommender.predict(pd.DataFrame({"items": [[item]]}), k=5)["items"][0]  # ids pandas made floats
    assert len(recommender.predict(pd.DataFrame({"items": []}), k=5)) == 0
    for frame, k, message in [(pd.DataFrame({"history": [[1]]}), 5, "expected a DataFrame with an 'items' column"),
                              (pd.DataFrame({"items": [[1], 7]}), 5, "row 1: expected a list of item ids"),
                              (pd.DataFrame({"items": [[1]]}), 0, "k: expected a whole number >= 1, got 0")]:
        with pytest.raises(ValueError, match=message):
            recommender.predict(frame, k=k)
    assert pyfunc._absent(np.array([-1, -2, 5])) == -3 and recommender.pad == -1


def test_a_user_who_has_seen_every_item_is_counted_not_silently_left_out(tmp_path):
    import contextlib

    import pyarrow as pa

    from bert4rec.data.records import FIRST_ITEM
    from bert4rec.model.recommend import Predictions
    from bert4rec.stages.inference import Outputs

    target = tmp_path / "predictions.parquet"
    with contextlib.ExitStack() as files:
        outputs = Outputs(files, {"predictions": target}, pa.array(["a", "b"]), pa.array([10, 11]), 4, keyed=False)
        inf = float("-inf")
        outputs.write(Predictions(np.array([0, 1]), np.array([[FIRST_ITEM + 1, FIRST_ITEM], [FIRST_ITEM, FIRST_ITEM]]),
                                  np.array([[2.0, 1.0], [inf, inf]]), np.zeros((2, 4))))
    assert outputs.without_candidates == 1
    assert pd.read_parquet(target)[["user_id", "item_id"]].values.tolist() == [["a", 11], ["a", 10]]
