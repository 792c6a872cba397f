"""Replica-correct loss: the same steps on 1, 2 and 3 logical-CPU replicas give the same weights, although the
global batches (8, and a last one of 7) do not divide evenly among 2 or 3 replicas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import latest_weights, run_trainer, toy_config, trainer_flags, write_toy_corpus


@pytest.fixture(scope="module")
def replica_runs(tmp_path_factory, cache_dir, deterministic_encoder):
    encoder, preprocess = deterministic_encoder
    corpus = write_toy_corpus(tmp_path_factory.mktemp("replicas") / "bbc", docs_per_class=16)  # 39 train docs
    weights = {}
    for replicas in (1, 2, 3):
        tmp = tmp_path_factory.mktemp(f"r{replicas}")
        cfg = toy_config(tmp, corpus, cache_dir, epochs=1)
        flags = [*trainer_flags(cfg), "--encoder-handle", encoder, "--preprocess-handle", preprocess,
                 "--dropout", "0", "--strategy", "mirrored", "--logical-cpus", str(replicas)]
        done = run_trainer(flags)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"{replicas} replica(s)" in done.stderr
        run_dir = next(Path(cfg.checkpoint_dir).iterdir())
        weights[replicas] = latest_weights(run_dir)
    return weights


@pytest.mark.parametrize("replicas", [2, 3])
def test_uneven_replica_shares_give_the_one_device_weights(replica_runs, replicas):
    one, many = replica_runs[1], replica_runs[replicas]
    assert one.keys() == many.keys() and len(one) > 10
    for key in one:
        np.testing.assert_allclose(many[key], one[key], rtol=1e-4, atol=2e-5, err_msg=key)
