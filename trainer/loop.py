"""The custom training loop: a plain GradientTape step under tf.distribute, one epoch at a time.

Shape of the loop follows Keras' "writing a training loop from scratch" guide: metric objects created once,
updated per batch, read and reset per epoch; the tape holds only the forward pass and the loss.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import time

import numpy as np
import tensorflow as tf
import tf_keras
from tqdm import tqdm

from trainer import summaries
from trainer.checkpoints import Checkpoints, make_state
from trainer.model import HEAD_NAME

log = logging.getLogger("bertbc.trainer")

# Test hook: SIGKILL this process right after global step N, exactly like `kill -9` mid-epoch.
_KILL_AT_STEP = int(os.environ.get("BERTBC_TEST_KILL_AT_STEP", "0") or 0)


def make_strategy(name: str = "auto", logical_cpus: int = 0) -> tf.distribute.Strategy:
    """One device by default; MirroredStrategy across GPUs (or logical CPUs, for testing) when asked or found.

    Args:
      name: "auto" (mirrored iff more than one GPU is visible), "default" (one device) or "mirrored".
      logical_cpus: if > 1, split the CPU into this many logical devices first (must run before TF uses devices).
    """
    if logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    return tf.distribute.get_strategy()


def configure_precision(mode: str) -> None:
    """Sets the Keras mixed-precision policy and the matching Grappler rewrite.

    The encoder is a loaded SavedModel, so a Keras policy alone would only touch the head; Grappler's
    auto-mixed-precision rewrite casts the encoder's matmuls too (bf16 on oneDNN CPUs, fp16 on CUDA GPUs).
    The dense head is built with dtype float32 and the loss is computed in float32 either way.
    """
    if mode == "off":
        tf_keras.mixed_precision.set_global_policy("float32")
        return
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    if mode == "bf16":
        tf_keras.mixed_precision.set_global_policy("mixed_bfloat16")
        option = "auto_mixed_precision" if on_gpu else "auto_mixed_precision_onednn_bfloat16"
    else:
        tf_keras.mixed_precision.set_global_policy("mixed_float16")
        option = "auto_mixed_precision"
    tf.config.optimizer.set_experimental_options({option: True})


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


def make_learning_rate(peak: float, warmup_fraction: float, total_steps: int):
    """Constant `peak` when warmup_fraction is 0 (the seed notebook), else warm-up + linear decay."""
    if warmup_fraction <= 0:
        return peak
    return WarmupLinearDecay(peak, total_steps, int(round(warmup_fraction * total_steps)))


@dataclasses.dataclass
class Steps:
    """The compiled per-batch functions and the metric objects they update."""

    train_step: tf.types.experimental.GenericFunction
    val_step: tf.types.experimental.GenericFunction
    train_loss: tf_keras.metrics.Mean
    train_accuracy: tf_keras.metrics.SparseCategoricalAccuracy
    val_loss: tf_keras.metrics.Mean
    val_accuracy: tf_keras.metrics.SparseCategoricalAccuracy

    def reset(self) -> None:
        for metric in (self.train_loss, self.train_accuracy, self.val_loss, self.val_accuracy):
            metric.reset_state()


def make_steps(strategy, model, optimizer, *, loss_scaling: bool = False, compiled: bool = True) -> Steps:
    """Builds `train_step`/`val_step` for `strategy`: one distributed batch in, global mean loss out.

    Must be called inside `strategy.scope()`. `compiled=False` runs them eagerly (benchmark only).
    """
    loss_fn = tf_keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=tf_keras.losses.Reduction.NONE)
    train_loss = tf_keras.metrics.Mean("loss")
    train_accuracy = tf_keras.metrics.SparseCategoricalAccuracy("accuracy")
    val_loss = tf_keras.metrics.Mean("val_loss")
    val_accuracy = tf_keras.metrics.SparseCategoricalAccuracy("val_accuracy")

    def train_replica(features, labels):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(features, training=True), tf.float32)
            per_example = loss_fn(labels, logits)
            loss = tf.nn.compute_average_loss(per_example)
            scaled = optimizer.get_scaled_loss(loss) if loss_scaling else loss
        grads = tape.gradient(scaled, model.trainable_variables)
        if loss_scaling:
            grads = optimizer.get_unscaled_gradients(grads)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        train_loss.update_state(per_example)
        train_accuracy.update_state(labels, logits)
        return loss

    def val_replica(features, labels):
        logits = tf.cast(model(features, training=False), tf.float32)
        val_loss.update_state(loss_fn(labels, logits))
        val_accuracy.update_state(labels, logits)
        return labels, tf.argmax(logits, axis=-1, output_type=tf.int32)

    def train_step(batch):
        per_replica = strategy.run(train_replica, args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def val_step(batch):
        labels, predictions = strategy.run(val_replica, args=batch)
        return strategy.gather(labels, axis=0), strategy.gather(predictions, axis=0)

    wrap = tf.function if compiled else (lambda f: f)
    return Steps(wrap(train_step), wrap(val_step), train_loss, train_accuracy, val_loss, val_accuracy)


def head_adam_moments(optimizer, model) -> dict[str, tuple[tf.Variable, tf.Variable]]:
    """Adam's first (m) and second (v) moment slots of the dense head's kernel and bias, by variable name.

    tf_keras' Adam names its slots `m/<var>` and `v/<var>` (`add_variable_from_reference`); looking them up in
    the public `optimizer.variables` avoids private attributes.
    """
    slots = {v.name.split(":")[0]: v for v in optimizer.variables}
    moments = {}
    for var in model.get_layer(HEAD_NAME).trainable_variables:
        base = var.name.split(":")[0]
        short = base.rsplit("/", 1)[-1]
        m = next((s for n, s in slots.items() if n.endswith(f"m/{base}")), None)
        v = next((s for n, s in slots.items() if n.endswith(f"v/{base}")), None)
        if m is None or v is None:
            raise KeyError(f"no Adam slots for {base} among {sorted(slots)[:8]}...")
        moments[short] = (m, v)
    return moments


@dataclasses.dataclass
class EpochResult:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    improved: bool
    seconds: float
    confusion: list[list[int]]


def run_epochs(
    *,
    strategy,
    steps: Steps,
    model,
    optimizer,
    checkpoints: Checkpoints,
    make_train_ds,
    val_ds,
    epochs: int,
    num_classes: int,
    class_names: list[str],
    logger: summaries.RunLogger,
    learning_rate,
    steps_per_summary: int,
    steps_per_epoch: int,
) -> list[EpochResult]:
    """Trains from the checkpoint's epoch to `epochs`, checkpointing best/latest after each epoch.

    Args:
      make_train_ds: epoch index -> tf.data.Dataset (a per-epoch seed keeps resumed runs identical to
        uninterrupted ones).
    """
    results = []
    history = checkpoints.read_history()
    dist_val = strategy.experimental_distribute_dataset(val_ds)
    start = int(checkpoints.state.epoch.numpy())
    for epoch in range(start + 1, epochs + 1):
        started = time.perf_counter()
        steps.reset()
        dist_train = strategy.experimental_distribute_dataset(make_train_ds(epoch))
        bar = tqdm(dist_train, total=steps_per_epoch, desc=f"epoch {epoch}/{epochs}", unit="step",
                   mininterval=1.0, dynamic_ncols=True)
        for batch in bar:
            loss = float(steps.train_step(batch))
            if not math.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss} at epoch {epoch}: lower --learning-rate")
            step = int(optimizer.iterations.numpy())
            if step == _KILL_AT_STEP:
                os.kill(os.getpid(), signal.SIGKILL)
            bar.set_postfix(loss=f"{loss:.4f}", acc=f"{float(steps.train_accuracy.result()):.4f}", refresh=False)
            if step % steps_per_summary == 0:
                lr = learning_rate(step) if callable(learning_rate) else learning_rate
                logger.step(step, loss, float(lr))
        bar.close()
        confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        for batch in dist_val:
            labels, predictions = steps.val_step(batch)
            confusion += tf.math.confusion_matrix(labels, predictions, num_classes=num_classes,
                                                  dtype=tf.int64).numpy()
        train = {"loss": float(steps.train_loss.result()), "accuracy": float(steps.train_accuracy.result())}
        val = {"loss": float(steps.val_loss.result()), "accuracy": float(steps.val_accuracy.result())}
        logger.epoch(epoch, train, val)
        logger.adam_moments(epoch, head_adam_moments(optimizer, model))
        logger.confusion(epoch, confusion, class_names)
        improved = checkpoints.end_epoch(val["accuracy"])
        result = EpochResult(epoch, train["loss"], train["accuracy"], val["loss"], val["accuracy"],
                             summaries.macro_f1(confusion), improved, time.perf_counter() - started,
                             confusion.tolist())
        history.append(dataclasses.asdict(result))
        checkpoints.write_history(history)
        results.append(result)
        best = float(checkpoints.state.best_val_accuracy.numpy())
        verdict = "new best, saved best checkpoint" if improved else f"did not improve on best {best:.4f}"
        log.info("epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f macro-F1 %.4f | %s (%.0f s)",
                 epoch, epochs, train["loss"], train["accuracy"], val["loss"], val["accuracy"],
                 result.val_macro_f1, verdict, result.seconds)
    return results


def build_training(strategy, build_model, *, learning_rate, mixed_precision: str):
    """Creates model, optimizer, checkpoint state and steps inside the strategy's scope."""
    with strategy.scope():
        model = build_model()
        optimizer = tf_keras.optimizers.Adam(learning_rate=learning_rate)
        if mixed_precision == "fp16":
            optimizer = tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
        state = make_state(model, optimizer)
        steps = make_steps(strategy, model, optimizer, loss_scaling=mixed_precision == "fp16")
    return model, optimizer, state, steps
