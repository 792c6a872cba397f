"""Best-validation and latest-epoch checkpoints: what makes export pick the best model and a crash resumable.

Layout of a run folder (`<checkpoint_dir>/<run>/`):
  history.json  per-epoch metrics, rewritten atomically at the end of each epoch
  latest/       model + optimizer + counters after the last COMMITTED epoch; resume reads it
  best/         model weights + best accuracy/epoch of the best epoch so far (no optimizer: export needs none)

End of epoch E, in this order (a SIGKILL anywhere leaves a state the next run resumes from correctly):
  1. history.json gets epoch E;
  2. latest/ is saved: THE commit point (tf.train.CheckpointManager rewrites its index file atomically, after
     the data files);
  3. best/ is saved if E improved on the best validation accuracy.
On resume from latest/ at epoch E: history entries after E are dropped (they belong to an epoch that never
committed and will be trained again), and if E is the best epoch but best/ does not hold it yet (killed between
2 and 3), best/ is saved from the restored weights, which are epoch E's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
from pathlib import Path

import tensorflow as tf

from trainer import faults
from trainer.distributed import WorkerFolders

log = logging.getLogger("bertbc.trainer")


@dataclasses.dataclass
class TrainState:
    """Trackable training state; `epoch` counts committed epochs, `best_val_accuracy` is -1 before any."""

    checkpoint: tf.train.Checkpoint  # everything: what latest/ holds
    best_checkpoint: tf.train.Checkpoint  # weights + best counters: what best/ holds
    epoch: tf.Variable
    best_val_accuracy: tf.Variable
    best_epoch: tf.Variable


def make_state(model, optimizer=None) -> TrainState:
    """The run's trackable state; without an optimizer (export) only `best_checkpoint` is meaningful."""
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    best = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_val_accuracy")
    best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
    full = {"model": model, "epoch": epoch, "best_val_accuracy": best, "best_epoch": best_epoch}
    if optimizer is not None:
        full["optimizer"] = optimizer
    checkpoint = tf.train.Checkpoint(**full)
    best_checkpoint = tf.train.Checkpoint(model=model, best_val_accuracy=best, best_epoch=best_epoch)
    return TrainState(checkpoint, best_checkpoint, epoch, best, best_epoch)


def checkpoint_number(path: str | None) -> int | None:
    """`.../ckpt-7` -> 7 (CheckpointManager names checkpoints by the number it was given)."""
    match = re.search(r"ckpt-(\d+)$", path or "")
    return int(match.group(1)) if match else None


class Checkpoints:
    """The two checkpoint managers of a run plus its metric history.

    Saves are collective under multi-worker strategies: every worker calls them; `folders` sends a non-chief
    worker's copy to a scratch folder (removed after each save), and only the chief writes history.json.
    """

    def __init__(self, checkpoint_dir: str | Path, state: TrainState, folders: WorkerFolders | None = None):
        self.dir = Path(checkpoint_dir)
        self.state = state
        self.folders = folders
        self.is_chief = folders is None or folders.cluster.is_chief
        path = folders.path if folders else (lambda p: p)
        self.latest = tf.train.CheckpointManager(state.checkpoint, path(str(self.dir / "latest")), max_to_keep=1)
        self.best = tf.train.CheckpointManager(state.best_checkpoint, path(str(self.dir / "best")), max_to_keep=1)

    def _after_save(self) -> None:
        if self.folders:
            self.folders.clean()

    def restore_latest(self) -> bool:
        """Restores the last committed epoch (from the chief's folder) and repairs what a kill left behind.

        Returns whether there was an epoch to restore.
        """
        path = tf.train.latest_checkpoint(str(self.dir / "latest"))
        if path is None:
            return False
        # Adam's slots are created at the first step and restored then; a run that only has its export left never
        # takes a step, so they stay pending by design (expect_partial keeps TF from warning about each one).
        self.state.checkpoint.restore(path).assert_existing_objects_matched().expect_partial()
        epoch = int(self.state.epoch.numpy())
        if self.is_chief:
            history = self.read_history()
            kept = [h for h in history if h["epoch"] <= epoch]
            if len(kept) != len(history):
                log.info("dropping %d history entr(y/ies) after committed epoch %d", len(history) - len(kept), epoch)
                self.write_history(kept)
        best_epoch = int(self.state.best_epoch.numpy())
        if best_epoch == epoch and checkpoint_number(tf.train.latest_checkpoint(str(self.dir / "best"))) != epoch:
            log.info("best/ is missing committed best epoch %d (interrupted save): saving it now", epoch)
            self.best.save(checkpoint_number=epoch)
            self._after_save()
        return True

    def end_epoch(self, val_accuracy: float, history: list[dict], entry_fn) -> bool:
        """Commits a finished epoch in crash-safe order (see the module docstring). Returns improved.

        Args:
          val_accuracy: the epoch's validation accuracy.
          history: the run's history so far (appended to in place).
          entry_fn: improved -> the history entry (a dict with "epoch") of this epoch.
        """
        epoch = int(self.state.epoch.numpy()) + 1
        improved = val_accuracy > float(self.state.best_val_accuracy.numpy())
        self.state.epoch.assign(epoch)
        if improved:
            self.state.best_val_accuracy.assign(val_accuracy)
            self.state.best_epoch.assign(epoch)
        history.append(entry_fn(improved))
        faults.maybe_kill("before_history", epoch)
        if self.is_chief:
            self.write_history(history)
        faults.maybe_kill("before_latest", epoch)
        self.latest.save(checkpoint_number=epoch)
        self._after_save()
        faults.maybe_kill("between_saves", epoch)
        if improved:
            self.best.save(checkpoint_number=epoch)
            self._after_save()
        return improved

    def read_history(self) -> list[dict]:
        path = self.dir / "history.json"
        return json.loads(path.read_text()) if path.exists() else []

    def write_history(self, history: list[dict]) -> None:
        write_json_atomic(self.dir / "history.json", history)


def best_checkpoint_path(checkpoint_dir: str | Path) -> str:
    """The best checkpoint's prefix, or a clear error if training never finished an epoch there."""
    path = tf.train.latest_checkpoint(str(Path(checkpoint_dir) / "best"))
    if path is None:
        raise FileNotFoundError(f"no best checkpoint under {Path(checkpoint_dir) / 'best'}: train first "
                                "(python -m trainer --checkpoint-dir ...) or point --checkpoint-dir at a finished run")
    return path


def write_json_atomic(path: str | Path, payload) -> None:
    """Writes JSON so a reader sees the old file or the new one, never half of one, even after a power cut."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: str | Path) -> None:
    """Makes a rename or new entry in `path` durable (POSIX: the directory itself must be synced)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (and Windows) cannot sync a directory; nothing more can be done there
    finally:
        os.close(fd)
