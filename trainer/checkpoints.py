"""Best-validation and latest-epoch checkpoints: what makes export pick the best model and a crash resumable.

Layout of a run folder (`<checkpoint_dir>/<run>/`):
  history.json  per-epoch metrics, rewritten atomically at the end of each epoch
  latest/       model + optimizer + counters after the last COMMITTED epoch; resume reads it
  latest/steps/ the same plus the position inside the next epoch (batches done, running train metrics), saved
                every --save-every-minutes and on SIGINT/SIGTERM; valid only while its committed-epoch counter
                equals latest/'s (after the next epoch commits it is stale: ignored, then removed)
  best/         model weights + best accuracy/epoch of the best epoch so far (no optimizer: export needs none)

End of epoch E, in this order (a SIGKILL anywhere leaves a state the next run resumes from correctly):
  1. history.json gets epoch E;
  2. latest/ is saved: THE commit point (tf.train.CheckpointManager rewrites its index file atomically, after
     the data files);
  3. best/ is saved if E improved on the best validation accuracy.
On resume from latest/ at epoch E: history entries after E are dropped (they belong to an epoch that never
committed and will be trained again), and if E is the best epoch but best/ does not hold it yet (killed between
2 and 3), best/ is saved from the restored weights, which are epoch E's. If latest/steps/ holds a step save
made after E, the run resumes from it instead: mid-epoch, with nothing of that epoch trained twice. Everything
random in training is a function of the run seed, the epoch and the global step (shuffle seed per epoch,
dropout seed per step), so that position is the whole random state.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import tensorflow as tf

from trainer import faults
from trainer.distributed import WorkerFolders

log = logging.getLogger("bertbc.trainer")


@dataclasses.dataclass
class TrainState:
    """Trackable training state; `epoch` counts committed epochs, `best_val_accuracy` is -1 before any."""

    checkpoint: tf.train.Checkpoint  # everything at an epoch boundary: what latest/ holds
    best_checkpoint: tf.train.Checkpoint  # weights + best counters: what best/ holds
    epoch: tf.Variable
    best_val_accuracy: tf.Variable
    best_epoch: tf.Variable
    step_checkpoint: tf.train.Checkpoint | None = None  # `checkpoint` + position in the epoch: latest/steps/
    step_in_epoch: tf.Variable | None = None  # batches of epoch `epoch + 1` already trained (0 at a boundary)


def make_state(model, optimizer=None, metrics: dict | None = None) -> TrainState:
    """The run's trackable state; without an optimizer (export) only `best_checkpoint` is meaningful.

    Args:
      metrics: the running train metrics by name (`loop.Steps`); a step save keeps them so a resumed epoch
        reports the same train loss/accuracy as an uninterrupted one.
    """
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    best = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_val_accuracy")
    best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
    full = {"model": model, "epoch": epoch, "best_val_accuracy": best, "best_epoch": best_epoch}
    if optimizer is not None:
        full["optimizer"] = optimizer
    checkpoint = tf.train.Checkpoint(**full)
    best_checkpoint = tf.train.Checkpoint(model=model, best_val_accuracy=best, best_epoch=best_epoch)
    if optimizer is None:
        return TrainState(checkpoint, best_checkpoint, epoch, best, best_epoch)
    step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
    step_checkpoint = tf.train.Checkpoint(**full, step_in_epoch=step_in_epoch, **(metrics or {}))
    return TrainState(checkpoint, best_checkpoint, epoch, best, best_epoch, step_checkpoint, step_in_epoch)


def checkpoint_number(path: str | None) -> int | None:
    """`.../ckpt-7` -> 7 (CheckpointManager names checkpoints by the number it was given)."""
    match = re.search(r"ckpt-(\d+)$", path or "")
    return int(match.group(1)) if match else None


_EPOCH_KEY = "epoch/.ATTRIBUTES/VARIABLE_VALUE"


def _committed_epoch(path: str | None) -> int | None:
    """The committed-epoch counter stored in a checkpoint, read without restoring it (None if unreadable)."""
    if path is None:
        return None
    try:
        return int(tf.train.load_checkpoint(path).get_tensor(_EPOCH_KEY))
    except (tf.errors.OpError, ValueError, KeyError) as e:
        log.warning("ignoring unreadable checkpoint %s (%s)", path, str(e).splitlines()[0])
        return None


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
        self._path = path
        self.latest = tf.train.CheckpointManager(state.checkpoint, path(str(self.dir / "latest")), max_to_keep=1)
        self.best = tf.train.CheckpointManager(state.best_checkpoint, path(str(self.dir / "best")), max_to_keep=1)
        self.steps = self._steps_manager()
        self.last_step_saved: int | None = None  # global step of this process's newest step save

    def _steps_manager(self) -> tf.train.CheckpointManager | None:
        if self.state.step_checkpoint is None:
            return None
        return tf.train.CheckpointManager(self.state.step_checkpoint, self._path(str(self.steps_dir)), max_to_keep=1)

    @property
    def steps_dir(self) -> Path:
        return self.dir / "latest" / "steps"

    def _after_save(self) -> None:
        if self.folders:
            self.folders.clean()

    def restore_latest(self) -> bool:
        """Restores the newest resumable state (from the chief's folders) and repairs what a kill left behind:
        the step save of the epoch after the last committed one if there is one, else the last committed epoch.

        Returns whether there was anything to restore; `state.step_in_epoch` (if the state has it) then says
        how many batches of the next epoch are already trained.
        """
        path = tf.train.latest_checkpoint(str(self.dir / "latest"))
        step_path = tf.train.latest_checkpoint(str(self.steps_dir)) if self.steps else None
        committed = _committed_epoch(path) if path else 0
        mid_epoch = step_path is not None and committed is not None and _committed_epoch(step_path) == committed
        if path is None and not mid_epoch:
            self._trim_history(0)
            return False
        # Adam's slots are created at the first step and restored then; a run that only has its export left never
        # takes a step, so they stay pending by design (expect_partial keeps TF from warning about each one).
        # Only one checkpoint is restored: two restores would queue two values for each of those slots.
        if mid_epoch:
            self.state.step_checkpoint.restore(step_path).assert_existing_objects_matched().expect_partial()
            self.last_step_saved = checkpoint_number(step_path)
        else:
            self.state.checkpoint.restore(path).assert_existing_objects_matched().expect_partial()
        epoch = int(self.state.epoch.numpy())
        self._trim_history(epoch)
        best_epoch = int(self.state.best_epoch.numpy())
        if (not mid_epoch and best_epoch == epoch
                and checkpoint_number(tf.train.latest_checkpoint(str(self.dir / "best"))) != epoch):
            log.info("best/ is missing committed best epoch %d (interrupted save): saving it now", epoch)
            self.best.save(checkpoint_number=epoch)
            self._after_save()
        return True

    def _trim_history(self, epoch: int) -> None:
        """Drops history entries after committed epoch `epoch`: they belong to an epoch that will be trained again."""
        if not self.is_chief:
            return
        history = self.read_history()
        kept = [h for h in history if h["epoch"] <= epoch]
        if len(kept) != len(history):
            log.info("dropping %d history entr(y/ies) after committed epoch %d", len(history) - len(kept), epoch)
            self.write_history(kept)

    def save_step(self, step_in_epoch: int, global_step: int) -> None:
        """Saves the position `step_in_epoch` batches into the epoch after the committed one (a collective under
        multi-worker strategies: every worker calls it at the same step). Numbered by the global step."""
        self.state.step_in_epoch.assign(step_in_epoch)
        self.steps.save(checkpoint_number=global_step)
        self.last_step_saved = global_step
        self._after_save()

    def _drop_step_saves(self) -> None:
        """Removes latest/steps/ once the epoch it was inside has committed (stale from then on: never read)."""
        if self.steps is None:
            return
        if self.is_chief:
            shutil.rmtree(self.steps_dir, ignore_errors=True)
        self.steps = self._steps_manager()
        self.last_step_saved = None

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
        if self.state.step_in_epoch is not None:
            self.state.step_in_epoch.assign(0)
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
        self._drop_step_saves()
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
