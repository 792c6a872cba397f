"""Same seed and flags -> the same model, bit for bit, in separate processes; another seed -> another model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.conftest import latest_weights, run_trainer, toy_config, trainer_flags, write_toy_corpus


def _train(tmp: Path, corpus: Path, cache_dir, *extra: str) -> dict:
    cfg = toy_config(tmp, corpus, cache_dir, epochs=2)
    done = run_trainer([*trainer_flags(cfg), *extra])
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = next(Path(cfg.checkpoint_dir).iterdir())
    return latest_weights(run_dir)


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, cache_dir, tiny_encoder):
    corpus = write_toy_corpus(tmp_path / "bbc", docs_per_class=12)
    first = _train(tmp_path / "a", corpus, cache_dir)
    second = _train(tmp_path / "b", corpus, cache_dir)
    assert first.keys() == second.keys()
    different = [k for k in first if not np.array_equal(first[k], second[k])]
    assert different == [], f"same seed, different weights: {different[:5]}"

    other = _train(tmp_path / "c", corpus, cache_dir, "--seed", "7")
    assert any(not np.array_equal(first[k], other[k]) for k in first)
