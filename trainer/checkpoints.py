"""Best-validation and latest-epoch checkpoints: what makes export pick the best model and a crash resumable.

Layout under `--checkpoint-dir`:
  latest/   the state after the last FINISHED epoch (model, optimizer, epoch, best accuracy); resume reads it.
  best/     the state after the epoch with the best validation accuracy so far; export reads it.
  history.json  per-epoch metrics, rewritten atomically after each epoch (the model card reads it).
A kill -9 mid-epoch loses at most that epoch: both managers only ever point at fully written checkpoints
(tf.train.CheckpointManager updates its index file after the data files are written).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import tensorflow as tf


@dataclasses.dataclass
class TrainState:
    """Trackable training state; `epoch` counts finished epochs, `best_val_accuracy` is -1 before any."""

    checkpoint: tf.train.Checkpoint
    epoch: tf.Variable
    best_val_accuracy: tf.Variable
    best_epoch: tf.Variable


def make_state(model, optimizer) -> TrainState:
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    best = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_val_accuracy")
    best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch,
                                     best_val_accuracy=best, best_epoch=best_epoch)
    return TrainState(checkpoint, epoch, best, best_epoch)


class Checkpoints:
    """The two checkpoint managers of a run plus its metric history."""

    def __init__(self, checkpoint_dir: str | Path, state: TrainState):
        self.dir = Path(checkpoint_dir)
        self.state = state
        self.latest = tf.train.CheckpointManager(state.checkpoint, str(self.dir / "latest"), max_to_keep=1)
        self.best = tf.train.CheckpointManager(state.checkpoint, str(self.dir / "best"), max_to_keep=1)

    def restore_latest(self) -> bool:
        """Restores the last finished epoch if there is one; returns whether it did."""
        path = self.latest.latest_checkpoint
        if path is None:
            return False
        self.state.checkpoint.restore(path).assert_existing_objects_matched()
        return True

    def end_epoch(self, val_accuracy: float) -> bool:
        """Records a finished epoch; saves `best/` only if validation accuracy improved. Returns improved."""
        epoch = int(self.state.epoch.numpy()) + 1
        self.state.epoch.assign(epoch)
        improved = val_accuracy > float(self.state.best_val_accuracy.numpy())
        if improved:
            self.state.best_val_accuracy.assign(val_accuracy)
            self.state.best_epoch.assign(epoch)
            self.best.save(checkpoint_number=epoch)
        self.latest.save(checkpoint_number=epoch)
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
    """Writes JSON so a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
