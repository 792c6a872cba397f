"""Training rows streamed from the files every epoch (issue 19, point 8): the same rows, labels, fingerprint and
batches as the held corpus, a bounded shuffle window for larger corpora, and a clear error if the data changes
under a run."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import toy_text
from trainer.data import DataError
from trainer.own_data import load_own_corpus
from trainer.pipeline import make_stream_train_dataset, make_train_dataset

TOPICS = ("politics", "sport", "business")


def write_csv(path: Path, rows: int = 90, seed: int = 0, multi: bool = False) -> Path:
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(rows):
            topics = rng.sample(TOPICS, 2) if multi and i % 3 == 0 else [TOPICS[i % len(TOPICS)]]
            writer.writerow([" ".join(toy_text(t, rng) for t in topics) + f" row {i}", "|".join(topics)])
        writer.writerow([toy_text("sport", rng), ""])  # dropped: no label (counted, never streamed)
    return path


def both(path: Path, **kw):
    return load_own_corpus(str(path), **kw), load_own_corpus(str(path), stream_train=True, **kw)


@pytest.mark.parametrize("kw", [{}, {"test_split": 0.2}, {"max_train_docs": 25},
                                {"multi_label": True, "label_separator": "|", "test_split": 0.2}])
def test_the_stream_yields_the_held_rows_labels_and_fingerprint(kw, tmp_path):
    data = write_csv(tmp_path / "news.csv", multi=kw.get("multi_label", False))
    held, streamed = both(data, **kw)
    assert streamed.train_texts == () and held.train_stream is None  # nothing held when streaming
    assert streamed.num_train == held.num_train == len(held.train_texts) > 0
    assert list(streamed.train_stream) == list(zip(held.train_texts, held.train_labels, strict=True))
    assert list(streamed.train_stream) == list(streamed.train_stream)  # every epoch reads the same rows
    assert streamed.train_labels == held.train_labels
    assert streamed.fingerprint == held.fingerprint
    assert (streamed.val_texts, streamed.test_texts) == (held.val_texts, held.test_texts)
    assert streamed.class_counts("train") == held.class_counts("train")


def test_leakage_is_known_without_holding_the_training_texts(tmp_path):
    train = write_csv(tmp_path / "train.csv")
    rows = list(csv.reader(open(train, encoding="utf-8")))[1:]
    with open(tmp_path / "val.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text", "label"], rows[0], rows[1], [toy_text("business", random.Random(9)) + " unseen", "business"]])
    held, streamed = both(train, validation_data=str(tmp_path / "val.csv"))
    assert streamed.val_in_train() == held.val_in_train() == (True, True, False)


def test_a_stream_that_changes_under_a_run_stops_it_with_a_clear_error(tmp_path):
    data = write_csv(tmp_path / "news.csv")
    corpus = load_own_corpus(str(data), stream_train=True)
    lines = data.read_text(encoding="utf-8").splitlines(keepends=True)
    data.write_text("".join(lines[:40]), encoding="utf-8")
    with pytest.raises(DataError, match=r"the training split now has \d+ rows, the run counted \d+; the data "
                                        "changed while training"):
        list(corpus.train_stream)


def _batches(ds) -> list[list[bytes]]:
    return [list(x["text"].numpy()) for x, _ in ds]


def _text_only(texts):
    return {"text": texts}


def test_a_stream_that_fits_the_buffer_is_batched_exactly_as_in_memory(tmp_path):
    held, streamed = both(write_csv(tmp_path / "news.csv"))
    common = {"batch_size": 8, "seed": 43, "skip_batches": 2}
    in_memory = _batches(make_train_dataset(held.train_texts, held.train_labels, _text_only, **common))
    stream = _batches(make_stream_train_dataset(streamed.train_stream, _text_only, rows=streamed.num_train,
                                                num_classes=3, multi_label=False, shuffle_buffer=10_000, **common))
    assert stream == in_memory and len(in_memory) == -(-held.num_train // 8) - 2


def test_a_larger_stream_is_mixed_within_the_window_each_row_once(tmp_path):
    _, streamed = both(write_csv(tmp_path / "news.csv", rows=200))
    order = [t for b in _batches(make_stream_train_dataset(
        streamed.train_stream, _text_only, rows=streamed.num_train, num_classes=3, multi_label=False, batch_size=16,
        seed=1, shuffle_buffer=10)) for t in b]
    file_order = [t for t, _ in streamed.train_stream]
    assert sorted(order) == sorted(file_order) and order != file_order
    # A row can only move up to the window ahead of its place in the files.
    assert all(order.index(t) >= i - 10 for i, t in enumerate(file_order))


def test_multi_label_rows_stream_as_multi_hot_targets(tmp_path):
    _, streamed = both(write_csv(tmp_path / "news.csv", multi=True), multi_label=True, label_separator="|")
    ds = make_stream_train_dataset(streamed.train_stream, _text_only, rows=streamed.num_train, num_classes=3,
                                   multi_label=True, batch_size=256, seed=0, shuffle_buffer=1)  # buffer 1: file order
    _, targets = next(iter(ds))
    assert targets.dtype == tf.float32
    expected = np.zeros((streamed.num_train, 3), np.float32)
    for i, ids in enumerate(streamed.train_labels):
        expected[i, list(ids)] = 1.0
    np.testing.assert_array_equal(targets.numpy(), expected)
    assert (expected.sum(axis=1) == 2).any()  # rows with two labels are in the fixture


def test_the_shuffle_buffer_flag_is_checked_and_joins_the_resume_settings_when_set():
    from trainer import run
    from trainer.config import ConfigError, TrainConfig
    from trainer.schedule import make_schedule

    with pytest.raises(ConfigError, match="--shuffle-buffer must be >= 1, got 0"):
        TrainConfig(shuffle_buffer=0).validate()
    schedule = make_schedule(1e-4, 0.1, train_docs=100, batch_size=10, epochs=1)
    assert "shuffle_buffer" not in run.run_settings(TrainConfig(), "f", schedule)
    assert run.run_settings(TrainConfig(shuffle_buffer=5000), "f", schedule)["shuffle_buffer"] == 5000
    json.dumps(run.run_settings(TrainConfig(shuffle_buffer=5000), "f", schedule))


def test_a_large_validation_split_is_tokenized_per_pass_not_cached():
    from trainer.pipeline import eval_cache_fits, make_eval_dataset

    assert eval_cache_fits(445, 4, 256)  # BBC: 5.5 MB of windows, cached
    assert not eval_cache_fits(200_000, 4, 256)  # 1M rows at --validation-split 0.2: 2.5 GB, not cached

    def windowed(t):  # one "window" per text: its length
        return {"n": tf.strings.length(t)}, tf.range(tf.shape(t)[0])

    texts = [b"a", b"bb", b"ccc"]
    cached, fresh = (make_eval_dataset(texts, windowed, batch_size=2, cache=c) for c in (True, False))
    rows = [(x["n"].numpy().tolist(), i.numpy().tolist()) for x, i in fresh]
    assert rows == [(x["n"].numpy().tolist(), i.numpy().tolist()) for x, i in cached] == [([1, 2], [0, 1]), ([3], [2])]
    assert "CacheDataset" not in str(fresh._as_serialized_graph().numpy())
    assert "CacheDataset" in str(cached._as_serialized_graph().numpy())
