"""The custom training loop: a plain GradientTape step under tf.distribute, one epoch at a time.

Shape of the loop follows Keras' "writing a training loop from scratch" guide: metric objects created once,
updated per batch, read and reset per epoch; the tape holds only the forward pass and the loss.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import numpy as np
import tensorflow as tf
import tf_keras
from tqdm import tqdm

from trainer import faults, summaries
from trainer.checkpoints import Checkpoints, make_state
from trainer.model import HEAD_NAME
from trainer.schedule import Schedule
from trainer.windows import mean_over_windows

log = logging.getLogger("bertbc.trainer")

@dataclasses.dataclass
class Steps:
    """The compiled per-batch functions and the metric objects they update."""

    train_step: tf.types.experimental.GenericFunction
    val_step: tf.types.experimental.GenericFunction
    train_loss: tf_keras.metrics.Mean
    train_accuracy: tf_keras.metrics.SparseCategoricalAccuracy

    def reset(self) -> None:
        for metric in (self.train_loss, self.train_accuracy):
            metric.reset_state()


def make_steps(strategy, model, optimizer, *, loss_scaling: bool = False, compiled: bool = True) -> Steps:
    """Builds `train_step`/`val_step` for `strategy`: one distributed batch in, global mean loss out.

    Must be called inside `strategy.scope()`. `compiled=False` runs them eagerly (benchmark only).
    """
    loss_fn = tf_keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=tf_keras.losses.Reduction.NONE)
    train_loss = tf_keras.metrics.Mean("loss")
    train_accuracy = tf_keras.metrics.SparseCategoricalAccuracy("accuracy")

    def train_replica(features, labels):
        # Replicas may get unequal shares of a global batch (batch 16 on 3 devices, a short last batch), so the
        # mean is taken over the examples of ALL replicas: the summed gradients then equal one device's.
        global_batch = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.cast(tf.shape(labels)[0], tf.float32))
        with tf.GradientTape() as tape:
            logits = tf.cast(model(features, training=True), tf.float32)
            per_example = loss_fn(labels, logits)
            loss = tf.reduce_sum(per_example) / tf.maximum(global_batch, 1.0)
            scaled = optimizer.get_scaled_loss(loss) if loss_scaling else loss
        grads = tape.gradient(scaled, model.trainable_variables)
        if loss_scaling:
            grads = optimizer.get_unscaled_gradients(grads)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        train_loss.update_state(per_example)
        train_accuracy.update_state(labels, logits)
        return loss

    def val_replica(features, doc_ids):
        return doc_ids, tf.cast(model(features, training=False), tf.float32)

    def train_step(batch):
        per_replica = strategy.run(train_replica, args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def val_step(batch):
        """One batch of validation windows -> (doc_ids, logits) of all replicas (windows, not docs)."""
        per_replica = strategy.run(val_replica, args=batch)
        return tuple(strategy.gather(t, axis=0) for t in per_replica)

    wrap = tf.function if compiled else (lambda f: f)
    return Steps(wrap(train_step), wrap(val_step), train_loss, train_accuracy)


@dataclasses.dataclass
class Evaluation:
    """Validation over documents: loss and accuracy of the window-averaged logits, as the export serves them."""

    loss: float
    accuracy: float
    confusion: np.ndarray  # int64 [C, C], rows true, columns predicted
    doc_logits: np.ndarray  # float32 [N, C], each document's logits averaged over its windows


def evaluate(steps: Steps, dist_val, labels, num_classes: int) -> Evaluation:
    """Classifies every validation window, then averages each document's logits over its windows (the serving
    graph's rule, `trainer.windows.mean_over_windows`), so the accuracy that picks the best checkpoint is the
    exported model's. `labels`: the validation documents' class ids, in `make_eval_dataset`'s order."""
    num_docs = len(labels)
    ids, logits = [], []
    for batch in dist_val:
        batch_ids, batch_logits = steps.val_step(batch)
        ids.append(batch_ids)
        logits.append(batch_logits)
    ids, logits = tf.concat(ids, axis=0), tf.concat(logits, axis=0)
    seen = tf.math.unsorted_segment_sum(tf.ones_like(ids), ids, num_docs)
    if int(tf.reduce_min(seen)) < 1:
        raise RuntimeError(f"validation saw {int(tf.reduce_sum(tf.cast(seen > 0, tf.int32)))} of {num_docs} "
                           "documents: the validation dataset lost windows")
    doc_logits = mean_over_windows(logits, ids, num_docs)
    doc_labels = tf.constant(list(labels), tf.int32)
    loss = tf_keras.losses.sparse_categorical_crossentropy(doc_labels, doc_logits, from_logits=True)
    predictions = tf.argmax(doc_logits, axis=-1, output_type=tf.int32)
    confusion = tf.math.confusion_matrix(doc_labels, predictions, num_classes=num_classes, dtype=tf.int64).numpy()
    return Evaluation(float(tf.reduce_mean(loss)), float(np.trace(confusion) / num_docs), confusion,
                      doc_logits.numpy())


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
    val_labels,
    epochs: int,
    num_classes: int,
    class_names: list[str],
    logger: summaries.RunLogger,
    schedule: Schedule,
    steps_per_summary: int,
    show_progress: bool = True,
) -> list[EpochResult]:
    """Trains from the checkpoint's epoch to `epochs`, committing history, latest/ and best/ after each epoch.

    Args:
      make_train_ds: epoch index -> tf.data.Dataset (a per-epoch seed keeps resumed runs identical to
        uninterrupted ones).
      val_ds: validation windows (`pipeline.make_eval_dataset`); val_labels: its documents' class ids.
      schedule: the run's stored learning-rate schedule (for logging the rate each step actually used).
      show_progress: the tqdm bar (only the chief of a multi-worker job shows one).
    """
    results = []
    history = checkpoints.read_history() if checkpoints.is_chief else []
    dist_val = strategy.experimental_distribute_dataset(val_ds)
    start = int(checkpoints.state.epoch.numpy())
    for epoch in range(start + 1, epochs + 1):
        started = time.perf_counter()
        steps.reset()
        dist_train = strategy.experimental_distribute_dataset(make_train_ds(epoch))
        bar = tqdm(dist_train, total=schedule.steps_per_epoch, desc=f"epoch {epoch}/{epochs}", unit="step",
                   mininterval=1.0, dynamic_ncols=True, disable=not show_progress)
        for batch in bar:
            loss = float(steps.train_step(batch))
            if not math.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss} at epoch {epoch}: lower --learning-rate")
            step = int(optimizer.iterations.numpy())  # updates applied so far; this one had index step - 1
            faults.maybe_kill("step", step)
            bar.set_postfix(loss=f"{loss:.4f}", acc=f"{float(steps.train_accuracy.result()):.4f}", refresh=False)
            if step % steps_per_summary == 0:
                logger.step(step, loss, schedule.rate_at(step - 1))
        bar.close()
        evaluation = evaluate(steps, dist_val, val_labels, num_classes)
        val, confusion = {"loss": evaluation.loss, "accuracy": evaluation.accuracy}, evaluation.confusion
        train = {"loss": float(steps.train_loss.result()), "accuracy": float(steps.train_accuracy.result())}
        logger.epoch(epoch, train, val)
        logger.adam_moments(epoch, head_adam_moments(optimizer, model))
        logger.confusion(epoch, confusion, class_names)
        seconds = time.perf_counter() - started

        def entry(improved, epoch=epoch, train=train, val=val, confusion=confusion, seconds=seconds):
            return dataclasses.asdict(EpochResult(epoch, train["loss"], train["accuracy"], val["loss"],
                                                  val["accuracy"], summaries.macro_f1(confusion), improved,
                                                  seconds, confusion.tolist()))

        improved = checkpoints.end_epoch(val["accuracy"], history, entry)
        results.append(EpochResult(**history[-1]))
        best = float(checkpoints.state.best_val_accuracy.numpy())
        verdict = "new best, saved best checkpoint" if improved else f"did not improve on best {best:.4f}"
        log.info("epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f macro-F1 %.4f | %s (%.0f s)",
                 epoch, epochs, train["loss"], train["accuracy"], val["loss"], val["accuracy"],
                 results[-1].val_macro_f1, verdict, seconds)
    return results


def build_training(strategy, build_model, *, learning_rate, loss_scaling: bool):
    """Creates model, optimizer, checkpoint state and steps inside the strategy's scope.

    `loss_scaling` (float16 only, see trainer/precision.py) wraps Adam in a dynamic LossScaleOptimizer.
    """
    with strategy.scope():
        model = build_model()
        optimizer = tf_keras.optimizers.Adam(learning_rate=learning_rate)
        if loss_scaling:
            optimizer = tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
        state = make_state(model, optimizer)
        steps = make_steps(strategy, model, optimizer, loss_scaling=loss_scaling)
    return model, optimizer, state, steps
