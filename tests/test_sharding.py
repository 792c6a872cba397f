"""FILE sharding of a streamed corpus across workers (trainer/sharding.py): which worker reads which files, and
that the workers' streams together are the training split, every row once. The two-process run is in
test_multiworker.py."""

from __future__ import annotations

import collections
import logging
import re

import pytest

from tests.test_stream_train import write_csv
from trainer.data import DataError
from trainer.own_data import load_own_corpus
from trainer.sharding import FileShards, ShardingError, assign_files, plan_input_sharding


def test_files_go_largest_first_to_the_least_loaded_worker():
    files = (("a", 10), ("b", 70), ("c", 30), ("d", 30), ("e", 5))
    assert assign_files(files, 2) == (("b", "e"), ("a", "c", "d"))  # 75 vs 70 rows
    assert assign_files(files, 2) == assign_files(files, 2)
    assert assign_files(files, 3) == (("b",), ("a", "c"), ("d", "e"))
    assert sorted(f for shard in assign_files(files, 4) for f in shard) == list("abcde")  # each file once


@pytest.mark.parametrize("rows, replica_batch, per_worker, steps", [
    ((75, 70), 8, 1, 10),  # ceil(75 / 8)
    ((16, 3), 8, 1, 2),
    ((75, 70), 4, 2, 10),  # two replicas a worker: 19 batches of 4, two a step
])
def test_an_epoch_lasts_as_long_as_the_busiest_worker_needs(rows, replica_batch, per_worker, steps):
    shards = FileShards((("a",), ("b",)), rows, replica_batch, per_worker)
    assert shards.steps_per_epoch == steps


def test_auto_takes_file_sharding_when_it_applies_and_says_so(caplog):
    files = (("a.csv", 60), ("b.csv", 50), ("c.csv", 10))
    with caplog.at_level(logging.INFO, logger="bertbc.trainer"):
        shards = plan_input_sharding("auto", file_rows=files, num_workers=2, replicas=2, batch_size=16)
    assert shards.files == (("a.csv",), ("b.csv", "c.csv")) and shards.rows == (60, 60)
    assert shards.replica_batch == 8 and shards.steps_per_epoch == 8
    assert "input sharding: FILE, 3 files over 2 workers" in caplog.text
    assert plan_input_sharding("data", file_rows=files, num_workers=2, replicas=2, batch_size=16) is None
    assert plan_input_sharding("file", file_rows=files, num_workers=1, replicas=1, batch_size=16) is None


@pytest.mark.parametrize("file_rows, workers, batch, why", [
    ((("a.csv", 60),), 2, 16, "the training rows come from 1 file(s), fewer than the 2 workers"),
    ((), 2, 16, "the training rows are not streamed from data files"),
    ((("a.csv", 60), ("b.csv", 5)), 2, 15, "--batch-size 15 does not divide among 2 replicas"),
])
def test_file_sharding_that_cannot_apply_is_refused_or_falls_back_to_data(file_rows, workers, batch, why, caplog):
    with pytest.raises(ShardingError, match=re.escape("--input-sharding file cannot apply: " + why)):
        plan_input_sharding("file", file_rows=file_rows, num_workers=workers, replicas=workers, batch_size=batch)
    with caplog.at_level(logging.INFO, logger="bertbc.trainer"):
        assert plan_input_sharding("auto", file_rows=file_rows, num_workers=workers, replicas=workers,
                                   batch_size=batch) is None
    assert "input sharding: DATA" in caplog.text and why in caplog.text


def test_uneven_files_are_warned_about(caplog):
    with caplog.at_level(logging.INFO, logger="bertbc.trainer"):
        plan_input_sharding("auto", file_rows=(("a.csv", 90), ("b.csv", 10)), num_workers=2, replicas=2,
                            batch_size=16)
    assert "uneven row counts (busiest 1.80x the mean)" in caplog.text


def _three_files(tmp_path):
    for i, rows in enumerate((60, 36, 21)):
        write_csv(tmp_path / f"part-{i}.csv", rows=rows, seed=i)
    return str(tmp_path / "part-*.csv")


@pytest.mark.parametrize("kw", [{}, {"max_train_docs": 70}, {"test_split": 0.2}])
def test_the_workers_streams_together_are_the_training_split_every_row_once(kw, tmp_path):
    corpus = load_own_corpus(_three_files(tmp_path), stream_train=True, **kw)
    stream = corpus.train_stream
    assert [path.rsplit("/", 1)[-1] for path, _ in stream.file_rows] == ["part-0.csv", "part-1.csv", "part-2.csv"]
    assert sum(n for _, n in stream.file_rows) == corpus.num_train
    shards = plan_input_sharding("auto", file_rows=stream.file_rows, num_workers=2, replicas=2, batch_size=8)
    parts = [list(stream.shard(files)) for files in shards.files]
    assert [len(p) for p in parts] == list(shards.rows)
    assert collections.Counter(r for p in parts for r in p) == collections.Counter(stream)
    assert all(list(stream.shard(files)) == part for files, part in zip(shards.files, parts, strict=True))


def test_a_shard_whose_file_lost_rows_stops_with_the_clear_error(tmp_path):
    corpus = load_own_corpus(_three_files(tmp_path), stream_train=True)
    first = corpus.train_stream.file_rows[0][0]
    lines = open(first, encoding="utf-8").read().splitlines(keepends=True)
    open(first, "w", encoding="utf-8").write("".join(lines[:20]))
    with pytest.raises(DataError, match="part-0.csv: the training split now has 1[0-9] rows, the run counted"):
        list(corpus.train_stream.shard([first]))


def test_class_folders_have_no_file_shards(tmp_path):
    from tests.conftest import write_toy_corpus

    root = write_toy_corpus(tmp_path / "bbc", docs_per_class=6)
    corpus = load_own_corpus(str(root), test_split=0.2, stream_train=True, min_examples=1)
    assert corpus.train_stream.file_rows == ()
