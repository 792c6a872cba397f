"""Fault injection: SIGKILL the real trainer at every window where a crash could lose or duplicate work, rerun
the same command to the end, and check that nothing was lost or published twice; kill -9, Ctrl-C and SIGTERM
in the middle of an epoch, then check that the resumed run equals an uninterrupted one bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import latest_weights, run_trainer, toy_config, trainer_flags, write_toy_corpus
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


# The same toy run (dropout on: the tiny encoder's 0.1 and the head's 0.1) for every comparison below.
def _equal_runs_config(tmp: Path, cache_dir):
    corpus = write_toy_corpus(tmp / "bbc", docs_per_class=16)
    return toy_config(tmp, corpus, cache_dir, epochs=2)


def _flags(cfg) -> list[str]:
    """The trainer's command line; the publishing checks (seconds each, tested elsewhere) are left out."""
    return [*trainer_flags(cfg), "--gate", "off", "--load-check", "off"]


def _history(cfg) -> list[dict]:
    run_dir = next(Path(cfg.checkpoint_dir).iterdir())
    return [{k: v for k, v in h.items() if k != "seconds"}
            for h in json.loads((run_dir / "history.json").read_text())]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir, tiny_encoder):
    cfg = _equal_runs_config(tmp_path_factory.mktemp("uninterrupted"), cache_dir)
    done = run_trainer(_flags(cfg))
    assert done.returncode == 0, done.stderr[-3000:]
    return latest_weights(next(Path(cfg.checkpoint_dir).iterdir())), _history(cfg)


def _assert_equals_uninterrupted(cfg, uninterrupted):
    weights, history = uninterrupted
    resumed = latest_weights(next(Path(cfg.checkpoint_dir).iterdir()))
    assert resumed.keys() == weights.keys() and len(weights) > 10
    different = [k for k in weights if not np.array_equal(weights[k], resumed[k])]
    assert different == [], f"resumed run differs from the uninterrupted one in {different[:5]}"
    assert _history(cfg) == history  # the epoch's train loss/accuracy too: the running metrics were saved


def test_kill_9_mid_epoch_resumes_from_the_step_save_bit_for_bit(tmp_path, cache_dir, uninterrupted):
    cfg = _equal_runs_config(tmp_path, cache_dir)
    flags = [*_flags(cfg), "--save-every-minutes", "1e-9"]  # a step save after every step
    killed = run_trainer(flags, env={"BERTBC_TEST_KILL_AT": "step@7"})  # 5 steps per epoch: epoch 2, step 2
    assert killed.returncode == -9, killed.stderr[-2000:]
    run_dir = next(Path(cfg.checkpoint_dir).iterdir())
    assert checkpoint_number(tf.train.latest_checkpoint(str(run_dir / "latest" / "steps"))) == 7
    resumed = run_trainer(flags)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming epoch 2 after step 2/5" in resumed.stderr
    assert not (run_dir / "latest" / "steps").exists(), "a stale step save is left after its epoch committed"
    _assert_equals_uninterrupted(cfg, uninterrupted)


@pytest.mark.parametrize("signal_at, code, where", [
    ("SIGINT@7", 130, "epoch 2, step 2"),   # Ctrl-C mid-epoch (sent after global step 7)
    ("SIGTERM@5", 143, "epoch 1, step 5"),  # kill at the last step of an epoch: saved before its validation
])
def test_signal_saves_at_the_next_step_and_exits_with_one_line(signal_at, code, where, tmp_path, cache_dir,
                                                               uninterrupted):
    cfg = _equal_runs_config(tmp_path, cache_dir)
    stopped = run_trainer(_flags(cfg), env={"BERTBC_TEST_SIGNAL_AT": signal_at})
    assert stopped.returncode == code, stopped.stderr[-3000:]
    last = stopped.stderr.strip().splitlines()[-1]
    assert last == f"interrupted at {where}; saved; rerun the same command to resume", stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr and "KeyboardInterrupt" not in stopped.stderr
    assert not list(Path(cfg.model_base_path).glob("[0-9]*")), "an interrupted run must not export"
    resumed = run_trainer(_flags(cfg))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_equals_uninterrupted(cfg, uninterrupted)


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


def test_stop_signals_record_instead_of_raising_and_restore_the_defaults():
    import os
    import signal

    from trainer.interrupts import Interrupted, StopSignals

    before = signal.getsignal(signal.SIGINT)
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGINT)  # would raise KeyboardInterrupt without the handler
        assert signals.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is before
    stop = Interrupted(signal.SIGTERM, 2, 57)
    assert stop.exit_code == 143
    assert str(stop) == "interrupted at epoch 2, step 57; saved; rerun the same command to resume"
