from collections import Counter

import numpy as np
import pytest
import tensorflow as tf

from bert4rec.data.manifest import Manifest
from bert4rec.model import inputs as dataset
from bert4rec.data.records import MASK, PAD
from bert4rec.errors import UserError
from bert4rec.params import TfrecordParams

PARAMS = TfrecordParams(max_seq_length=20, max_predictions_per_seq=4, masked_lm_prob=0.2, mask_prob=1.0,
                        dupe_factor=10, short_seq_prob=0.0)


def windows(count=64, width=20, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, width + 1, size=count)
    ids = rng.integers(2, 50, size=(count, width)).astype(np.int32)
    ids[np.arange(width)[None, :] < (width - lengths)[:, None]] = PAD
    return ids, lengths


def mask(ids, params=PARAMS, seed=(1, 2)):
    out = dataset.dynamic_mask(tf.constant(seed, tf.int64), tf.constant(ids), params, 50)
    return [x.numpy() for x in out]


def test_dynamic_mask_follows_the_cloze_rules():
    ids, lengths = windows()
    inputs, positions, labels = mask(ids)
    used = labels != PAD
    last_only = (used.sum(1) == 1) & (positions[:, 0] == ids.shape[1] - 1) & (inputs[:, -1] == MASK)
    expected = np.clip(np.rint(lengths * 0.2), 1, 4)
    regular = ~last_only
    assert (used.sum(1)[regular] == expected[regular]).all()
    rows = np.repeat(np.arange(len(ids)), 4).reshape(-1, 4)
    assert (labels[used] == ids[rows[used], positions[used]]).all()  # labels are the original items
    assert (inputs[rows[used], positions[used]] == MASK).all()  # mask_prob 1: all become [MASK]
    assert (labels[used] != PAD).all() and (positions[~used] == 0).all()
    untouched = np.ones_like(ids, dtype=bool)
    untouched[rows[used], positions[used]] = False
    assert (inputs[untouched] == ids[untouched]).all()
    for row in np.flatnonzero(regular):
        assert (np.diff(positions[row][used[row]]) > 0).all()  # sorted, distinct


def test_dynamic_mask_is_seeded():
    ids, _ = windows()
    first, again, other = mask(ids, seed=(1, 2)), mask(ids, seed=(1, 2)), mask(ids, seed=(1, 3))
    assert all((a == b).all() for a, b in zip(first, again))
    assert any((a != b).any() for a, b in zip(first, other))


def test_last_item_only_share_is_one_in_dupe_factor_plus_one():
    ids, _ = windows(count=4000, seed=1)
    inputs, positions, labels = mask(ids, PARAMS.model_copy(update={"dupe_factor": 3}))
    single_last = ((labels != PAD).sum(1) == 1) & (positions[:, 0] == 19) & (labels[:, 0] == ids[:, -1])
    full_length_rows = (ids != PAD).sum(1) >= 10  # these mask 2+ items unless last-only
    assert single_last[full_length_rows].mean() == pytest.approx(0.25, abs=0.03)


def test_keep_or_random_replacement_when_mask_prob_below_one():
    ids, _ = windows(count=2000, seed=2)
    inputs, positions, labels = mask(ids, PARAMS.model_copy(update={"mask_prob": 0.0}))
    rows = np.repeat(np.arange(len(ids)), 4).reshape(-1, 4)
    last_only = inputs[:, -1] == MASK  # the mask-last examples always use [MASK]
    used = (labels != PAD) & ~last_only[:, None]
    replaced = inputs[rows[used], positions[used]]
    assert not (replaced == MASK).any()
    assert (replaced == labels[used]).mean() == pytest.approx(0.5, abs=0.05)


def test_bucket_widths():
    assert dataset.bucket_lengths(200, 4) == [50, 100, 150, 200]
    assert dataset.bucket_lengths(200, 1) == [200]


@pytest.mark.parametrize("masking", ["dynamic", "static"])
def test_training_batches_from_the_shards(synthetic_project, masking):
    import yaml

    from bert4rec import cli

    params = yaml.safe_load((synthetic_project / "params.yaml").read_text())
    params["tfrecord"]["masking"] = masking
    (synthetic_project / "params.yaml").write_text(yaml.safe_dump(params))
    assert cli.main(["raw", "--project", str(synthetic_project)]) == 0
    assert cli.main(["tfrecord", "--project", str(synthetic_project)]) == 0
    manifest = Manifest.read(synthetic_project / "data" / "processed" / "records")
    first = list(dataset.training_batches(manifest, 16, epoch=0, seed=1, buckets=2).as_numpy_iterator())
    again = list(dataset.training_batches(manifest, 16, epoch=0, seed=1, buckets=2).as_numpy_iterator())
    other = list(dataset.training_batches(manifest, 16, epoch=1, seed=1, buckets=2).as_numpy_iterator())
    assert all((a == b).all() for x, y in zip(first, again) for a, b in zip(x, y))
    assert any((a != b).any() for x, y in zip(first, other) for a, b in zip(x, y))
    widths = set()
    for inputs, positions, labels in first:
        widths.add(inputs.shape[1])
        assert inputs.shape[0] == 16 and positions.shape == labels.shape == (16, 4)
        rows = np.repeat(np.arange(16), 4).reshape(16, 4)
        used = labels != PAD
        assert used.any(axis=1).all()
        assert (inputs[rows[used], positions[used]] != PAD).all()  # masked slots lie inside the history
    assert widths <= {10, 20} and 20 in widths
    dropped = manifest.split("train").examples - sum(len(batch[0]) for batch in first)
    assert 0 <= dropped < 16  # the buckets' remainders are batched together: less than one batch left out
    assert len(first) == dataset.batches_per_epoch(manifest, 16, 2)


def test_a_bucket_smaller_than_a_batch_is_trained_on(synthetic_project):
    """The windows of a bucket that never fills a batch are in the epoch's last batches."""
    from bert4rec import cli

    assert cli.main(["raw", "--project", str(synthetic_project)]) == 0
    assert cli.main(["tfrecord", "--project", str(synthetic_project)]) == 0
    manifest = Manifest.read(synthetic_project / "data" / "processed" / "records")
    windows = [tuple(w[w != PAD]) for w in dataset.read_split(manifest, "train").map(lambda e: e["input_ids"])
               .as_numpy_iterator()]
    buckets = 8
    bounds = dataset.bucket_lengths(manifest.max_seq_length, buckets)
    sizes = np.bincount(np.searchsorted(bounds, [len(w) for w in windows]), minlength=len(bounds))
    batch = int(sizes[sizes > 0].min()) + 1  # the smallest bucket never fills a batch on its own
    batches = list(dataset.training_batches(manifest, batch, epoch=0, seed=1, buckets=buckets,
                                            objective="causal").as_numpy_iterator())
    trained = Counter(tuple(w[w != PAD]) for (inputs,) in batches for w in inputs)
    assert len(batches) == len(windows) // batch == dataset.batches_per_epoch(manifest, batch, buckets)
    assert sum((Counter(windows) - trained).values()) == len(windows) % batch  # every other window is in


def test_eval_batches_sort_by_length_and_match_the_records(synthetic_project):
    from bert4rec import cli

    assert cli.main(["raw", "--project", str(synthetic_project)]) == 0
    assert cli.main(["tfrecord", "--project", str(synthetic_project)]) == 0
    manifest = Manifest.read(synthetic_project / "data" / "processed" / "records")
    width = manifest.max_seq_length
    expected = {int(e["user_index"][0]): e for e in dataset.read_split(manifest, "valid").as_numpy_iterator()}
    seen, widths = [], []
    for batch in dataset.eval_batches(manifest, "valid", batch_size=8, chunk_size=13):
        inputs = batch.input_ids
        widths.append(((inputs != PAD).sum(axis=1).min(), inputs.shape[1]))
        assert len(inputs) <= 8 and (inputs != PAD).any(axis=0).all()  # cut to the longest input
        for row, user in enumerate(batch.user_index):
            record = expected[int(user)]
            np.testing.assert_array_equal(record["input_ids"][width - inputs.shape[1]:], inputs[row])
            assert (record["input_ids"][: width - inputs.shape[1]] == PAD).all()
            assert batch.target[row] == record["target"][0]
            history = batch.history[row]
            np.testing.assert_array_equal(history[: len(record["history"])], record["history"])
            assert (history[len(record["history"]):] == PAD).all()
            seen.append(int(user))
    assert sorted(seen) == sorted(expected) and len(seen) == len(expected)  # every user exactly once
    for (_, first_longest), (second_shortest, _) in zip(widths[::2], widths[1::2]):  # chunks of 13 = 8 + 5
        assert first_longest <= second_shortest  # sorted by length within a chunk


def test_eval_batches_with_empty_histories(tmp_path):
    from bert4rec.data.records import encode_example, write_record

    def example(user, inputs, history):
        return encode_example({"user_index": np.array([user], np.int32), "target": np.array([5], np.int32),
                               "input_ids": np.array(inputs, np.int32), "history": np.array(history, np.int32)})

    with open(tmp_path / "valid-0.tfrecord", "wb") as handle:
        write_record(handle, example(0, [PAD, PAD, MASK], []))
        write_record(handle, example(1, [PAD, 7, MASK], [7]))
        write_record(handle, example(2, [PAD, PAD, MASK], []))
    manifest = tiny_manifest(tmp_path, max_seq_length=3, shards=["valid-0.tfrecord"])
    batches = list(dataset.eval_batches(manifest, "valid", batch_size=2, chunk_size=2))
    assert [b.user_index.tolist() for b in batches] == [[0, 1], [2]]
    assert batches[0].history.tolist() == [[PAD], [7]] and batches[0].input_ids.shape == (2, 2)
    assert batches[1].history.shape == (1, 0) and batches[1].input_ids.tolist() == [[MASK]]


def tiny_manifest(folder, max_seq_length: int, shards: list[str]) -> Manifest:
    data = {"task": "train_val_test", "masking": "dynamic", "params": {"max_seq_length": max_seq_length,
            "max_predictions_per_seq": 1}, "params_hash": "", "vocabulary": {"file": "", "sha256": ""},
            "vocab_size": 10, "num_tokens": 12, "special_tokens": {}, "max_seq_length": max_seq_length,
            "max_predictions_per_seq": 1, "num_shards": len(shards),
            "splits": {"valid": {"examples": 0, "features": {}, "shards": [
                {"file": name, "examples": 0, "sha256": ""} for name in shards]}},
            "unknown_items": {}}
    manifest = Manifest.model_validate(data)
    manifest._folder = folder
    return manifest


def test_eval_chunks_merge_shards_in_user_order(tmp_path):
    """Users missing from a split (no target) must not break the user order of the merged stream."""
    from bert4rec.data.records import encode_example, write_record

    users = {"valid-0.tfrecord": [0, 3, 6, 9, 12], "valid-1.tfrecord": [1, 10, 13], "valid-2.tfrecord": [5, 8, 11, 14]}
    for name, ids in users.items():
        with open(tmp_path / name, "wb") as handle:
            for user in ids:
                write_record(handle, encode_example({
                    "user_index": np.array([user], np.int32), "input_ids": np.array([user, MASK], np.int32),
                    "target": np.array([2], np.int32), "history": np.arange(user % 3, dtype=np.int32) + 2}))
    manifest = tiny_manifest(tmp_path, max_seq_length=2, shards=list(users))
    chunks = list(dataset.eval_chunks(manifest, "valid", chunk_size=4))
    order = np.concatenate([c.user_index for c in chunks])
    assert order.tolist() == sorted(u for ids in users.values() for u in ids)
    assert [len(c) for c in chunks] == [4, 4, 4]
    for chunk in chunks:
        for row, user in enumerate(chunk.user_index):
            assert chunk.input_ids[row, 0] == user
            assert chunk.history[chunk.offsets[row]:chunk.offsets[row + 1]].tolist() == list(range(2, 2 + user % 3))


def test_validation_sample_is_seeded_and_in_user_order(synthetic_project):
    from bert4rec import cli

    assert cli.main(["raw", "--project", str(synthetic_project)]) == 0
    assert cli.main(["tfrecord", "--project", str(synthetic_project)]) == 0
    manifest = Manifest.read(synthetic_project / "data" / "processed" / "records")
    first = dataset.sample_rows(manifest, "valid", 40, seed=1)
    again = dataset.sample_rows(manifest, "valid", 40, seed=1)
    other = dataset.sample_rows(manifest, "valid", 40, seed=2)
    everyone = dataset.sample_rows(manifest, "valid", 10_000, seed=1)
    assert len(first) == 40 and first.user_index.tolist() == again.user_index.tolist()
    assert first.user_index.tolist() != other.user_index.tolist()
    assert (np.diff(first.user_index) > 0).all()
    assert len(everyone) == manifest.split("valid").examples
    rows = {int(u): i for i, u in enumerate(everyone.user_index)}
    for i, user in enumerate(first.user_index):  # the sampled rows are the users' own records
        j = rows[int(user)]
        assert (first.input_ids[i] == everyone.input_ids[j]).all() and first.target[i] == everyone.target[j]


def test_prefetched_keeps_the_order_raises_the_producers_error_and_stops_with_the_consumer():
    import threading

    assert list(dataset.prefetched(iter(range(100)), depth=3)) == list(range(100))

    def broken():
        yield 1
        raise UserError("records.tfrecord: not a TFRecord file")

    with pytest.raises(UserError, match="not a TFRecord file"):
        list(dataset.prefetched(broken()))
    taken = dataset.prefetched(iter(range(10**9)), depth=2)
    assert next(taken) == 0
    taken.close()  # the consumer stops early: the thread ends with it
    assert not any(t.name == "bert4rec-prefetch" for t in threading.enumerate())
