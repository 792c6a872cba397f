"""The learning-rate schedule, fixed when a run starts and stored with it (run.json), so a resume keeps it."""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf
import tf_keras


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Linear warm-up to `peak` over `warmup_steps`, then linear decay to 0 at `total_steps`.

    `warmup_steps == 0 and constant` is the seed notebook's constant rate.
    """

    peak: float
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    constant: bool

    def learning_rate(self):
        """What the optimizer takes: a float (constant) or a Keras schedule of the step index."""
        if self.constant:
            return self.peak
        return WarmupLinearDecay(self.peak, self.total_steps, self.warmup_steps)

    def rate_at(self, step_index: int) -> float:
        """The rate applied by the update with 0-based index `step_index` (optimizer.iterations before it)."""
        rate = self.learning_rate()
        return float(rate(step_index)) if callable(rate) else float(rate)


def make_schedule(peak: float, warmup_fraction: float, *, train_docs: int, batch_size: int, epochs: int,
                  steps_per_epoch: int | None = None) -> Schedule:
    """One step per global batch (the last one may be short); warm-up is a share of all steps.

    `steps_per_epoch` overrides the count from `train_docs` (FILE-sharded workers: `trainer.sharding`).
    """
    steps_per_epoch = steps_per_epoch or math.ceil(train_docs / batch_size)
    total = steps_per_epoch * epochs
    if warmup_fraction <= 0:
        return Schedule(peak, steps_per_epoch, total, 0, constant=True)
    return Schedule(peak, steps_per_epoch, total, int(round(warmup_fraction * total)), constant=False)


class WarmupLinearDecay(tf_keras.optimizers.schedules.LearningRateSchedule):
    """BERT's schedule: linear warm-up to `peak` over `warmup_steps`, then linear decay to 0 at `total_steps`."""

    def __init__(self, peak: float, total_steps: int, warmup_steps: int):
        self.peak, self.total_steps, self.warmup_steps = peak, max(total_steps, 1), warmup_steps

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * step / max(self.warmup_steps, 1)
        decay = self.peak * tf.maximum(0.0, (self.total_steps - step) / max(self.total_steps - self.warmup_steps, 1))
        return tf.where(step < self.warmup_steps, warm, decay)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps}
