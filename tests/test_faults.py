"""Fault injection: SIGKILL the real trainer at every window where a crash could lose or duplicate work, rerun
the same command to the end, and check that nothing was lost or published twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tensorflow as tf

from tests.conftest import run_trainer, toy_config, trainer_flags, write_toy_corpus
from trainer.checkpoints import checkpoint_number
from trainer.export import TMP_PREFIX, clean_stale_exports
from trainer.faults import POINTS, maybe_kill

EPOCHS = 3

# 16 docs per class -> 39 train docs -> 5 steps per epoch at batch 8: step 7 is in the middle of epoch 2.
KILLS = {
    "step@7": "mid-step in epoch 2",
    "before_history@2": "epoch 2 finished, nothing of it written",
    "before_latest@2": "epoch 2 in history.json, latest/ not committed",
    "between_saves@1": "latest/ committed with the new best epoch 1, best/ not saved yet",
    "export_before_rename": "version fully written in its temporary folder",
    "export_after_rename": "version published, run.json not yet finished",
}


@pytest.mark.parametrize("kill_at", list(KILLS), ids=list(KILLS))
def test_kill_then_rerun_loses_nothing_and_publishes_once(kill_at, tmp_path, cache_dir, tiny_encoder):
    corpus = write_toy_corpus(tmp_path / "bbc", docs_per_class=16)
    cfg = toy_config(tmp_path, corpus, cache_dir, epochs=EPOCHS)
    flags = trainer_flags(cfg)

    killed = run_trainer(flags, env={"BERTBC_TEST_KILL_AT": kill_at})
    assert killed.returncode == -9, f"not killed at {kill_at}: {killed.stderr[-2000:]}"

    done = run_trainer(flags)
    assert done.returncode == 0, done.stderr[-3000:]

    run_dir = next(Path(cfg.checkpoint_dir).iterdir())
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1)), history

    accuracies = [h["val_accuracy"] for h in history]
    best_epoch = 1 + accuracies.index(max(accuracies))
    assert checkpoint_number(tf.train.latest_checkpoint(str(run_dir / "best"))) == best_epoch
    assert [h["improved"] for h in history] == [a > max([-1.0, *accuracies[:i]]) for i, a in enumerate(accuracies)]

    models = Path(cfg.model_base_path)
    assert sorted(p.name for p in models.iterdir()) == ["1"], "exactly one version, no temporary folder"
    card = json.loads((models / "1" / "model_card.json").read_text())
    assert card["run_name"] == run_dir.name and card["best_epoch"] == best_epoch
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["finished"] is True and meta["version"] == 1


def test_every_documented_point_is_exercised():
    assert {k.split("@")[0] for k in KILLS} == set(POINTS)


def test_unknown_kill_point_is_an_error(monkeypatch):
    monkeypatch.setenv("BERTBC_TEST_KILL_AT", "nowhere")
    with pytest.raises(ValueError, match="unknown point"):
        maybe_kill("step", 1)


def test_stale_export_folders_are_removed_live_ones_kept(tmp_path):
    import fcntl

    base = tmp_path / "bertbc"
    dead = base / f"{TMP_PREFIX}123-dead"
    live = base / f"{TMP_PREFIX}456-live"
    fresh_unlocked = base / f"{TMP_PREFIX}789-renaming"
    for folder in (dead, live, fresh_unlocked):
        folder.mkdir(parents=True)
    (dead / ".export.lock").write_text("")
    (live / ".export.lock").write_text("")
    (base / "1").mkdir()
    with open(live / ".export.lock") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        removed = clean_stale_exports(base)
    assert removed == [dead]
    assert live.exists() and fresh_unlocked.exists() and (base / "1").exists()
