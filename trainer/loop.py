"""The custom training loop: a plain GradientTape step under tf.distribute, one epoch at a time.

Shape of the loop follows Keras' "writing a training loop from scratch" guide: metric objects created once,
updated per batch, read and reset per epoch; the tape holds only the forward pass and the loss.

Randomness is a function of the run: the shuffle of epoch E is seeded with `seed + E`, and every dropout mask of
global step s on replica r is drawn from `fold_in(fold_in([seed, 0], s), r)` (`trainer.model.dropout_seed`), so a
run resumed from any step save trains exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tf_keras
from tqdm import tqdm

from trainer import faults, summaries
from trainer.checkpoints import Checkpoints, make_state
from trainer.eta import RunClock, format_duration
from trainer.interrupts import Interrupted, StopSignals
from trainer.model import HEAD_NAME, dropout_seed
from trainer.multilabel import NEUTRAL_THRESHOLD, label_metrics, multi_hot
from trainer.schedule import Schedule
from trainer.windows import mean_over_windows

log = logging.getLogger("bertbc.trainer")

# The int32 [3] flags every worker feeds each step; averaged over all replicas, a non-zero entry means some worker
# asked: save a step checkpoint (its save interval elapsed), or stop after saving (it got SIGINT / SIGTERM).
SAVE, STOP_INT, STOP_TERM = 0, 1, 2
NO_FLAGS = (0, 0, 0)


@dataclasses.dataclass
class Steps:
    """The compiled per-batch functions and the metric objects they update.

    `train_step_flags(batch, flags int32 [3]) -> (loss, flags averaged over all replicas, float32)` is the loop's step: the
    sum lets all workers agree on when to save or stop at no extra collective. `train_step(batch) -> loss` is
    the same step without flags (benchmarks).
    """

    train_step_flags: tf.types.experimental.GenericFunction
    val_step: tf.types.experimental.GenericFunction
    train_loss: tf_keras.metrics.Mean
    train_accuracy: tf_keras.metrics.MeanMetricWrapper  # multi-label: subset accuracy at the neutral threshold

    def train_step(self, batch):
        return self.train_step_flags(batch, tf.constant(NO_FLAGS, tf.int32))[0]

    def reset(self) -> None:
        for metric in (self.train_loss, self.train_accuracy):
            metric.reset_state()

    def metrics(self) -> dict:
        """The running train metrics by name, for the step checkpoint."""
        return {"train_loss": self.train_loss, "train_accuracy": self.train_accuracy}


def replica_dropout_seed(seed: int, step, replica_id):
    """int64 [2]: the dropout seed of global step `step` (the update's 0-based index) on replica `replica_id`
    (`replica_id_in_sync_group`, global across workers): a pure function, so nothing needs saving."""
    step_seed = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), tf.cast(step, tf.int64))
    return tf.random.experimental.stateless_fold_in(step_seed, tf.cast(replica_id, tf.int64))


def subset_accuracy(targets, logits):
    """Per row, 1.0 when every label's decision at the neutral threshold (logit 0) matches the multi-hot target."""
    return tf.cast(tf.reduce_all(tf.equal(targets > 0.5, logits >= 0.0), axis=-1), tf.float32)


def make_steps(strategy, model, optimizer, *, seed: int = 0, loss_scaling: bool = False,
               compiled: bool = True, class_weights: Sequence[float] | None = None,
               multi_label: bool = False) -> Steps:
    """Builds the train/val steps for `strategy`: one distributed batch in, global mean loss out.

    Must be called inside `strategy.scope()`. `seed` (the run's --seed) seeds dropout, per step and replica
    (`replica_dropout_seed`). `compiled=False` runs them eagerly (benchmark only). `class_weights` (one per
    class, trainer/weights.py) scale each example's loss (multi-label: each label's positive term); the mean stays
    over examples, as Keras' `class_weight`.
    `multi_label` takes multi-hot float targets [B, C]: binary cross-entropy (mean over labels, per example) and
    subset accuracy instead of sparse categorical cross-entropy and accuracy.
    """
    weights = None if class_weights is None else tf.constant(list(class_weights), tf.float32)
    if multi_label:
        loss_fn = tf_keras.losses.BinaryCrossentropy(from_logits=True, reduction=tf_keras.losses.Reduction.NONE)
        train_accuracy = tf_keras.metrics.MeanMetricWrapper(subset_accuracy, name="accuracy")
    else:
        loss_fn = tf_keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=tf_keras.losses.Reduction.NONE)
        train_accuracy = tf_keras.metrics.SparseCategoricalAccuracy("accuracy")
    train_loss = tf_keras.metrics.Mean("loss")

    def train_replica(features, labels, flags):
        context = tf.distribute.get_replica_context()
        # Replicas may get unequal shares of a global batch (batch 16 on 3 devices, a short last batch), so the
        # mean is taken over the examples of ALL replicas: the summed gradients then equal one device's.
        global_batch = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.shape(labels)[0], tf.float32))
        step_seed = replica_dropout_seed(seed, optimizer.iterations, context.replica_id_in_sync_group)
        with tf.GradientTape() as tape, dropout_seed(step_seed):
            logits = tf.cast(model(features, training=True), tf.float32)
            if weights is None:
                per_example = loss_fn(labels, logits)
            elif multi_label:  # each label's positive term weighted (trainer/weights.py), then the mean over labels
                per_example = tf.reduce_mean(tf.nn.weighted_cross_entropy_with_logits(labels, logits, weights), -1)
            else:
                per_example = loss_fn(labels, logits) * tf.gather(weights, labels)
            loss = tf.reduce_sum(per_example) / tf.maximum(global_batch, 1.0)
            scaled = optimizer.get_scaled_loss(loss) if loss_scaling else loss
        grads = tape.gradient(scaled, model.trainable_variables)
        if loss_scaling:
            grads = optimizer.get_unscaled_gradients(grads)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        train_loss.update_state(per_example)
        train_accuracy.update_state(labels, logits)
        # MEAN, not SUM: every replica of a worker holds the same flags (SUM of mirrored values is refused);
        # the mean is above 0 exactly when some worker raised the flag.
        return loss, context.all_reduce(tf.distribute.ReduceOp.MEAN, tf.cast(flags, tf.float32))

    def val_replica(features, doc_ids):
        return doc_ids, tf.cast(model(features, training=False), tf.float32)

    def train_step_flags(batch, flags):
        loss, flags = strategy.run(train_replica, args=(*batch, flags))
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.MEAN, flags, axis=None))

    def val_step(batch):
        """One batch of validation windows -> (doc_ids, logits) of all replicas (windows, not docs)."""
        per_replica = strategy.run(val_replica, args=batch)
        return tuple(strategy.gather(t, axis=0) for t in per_replica)

    wrap = tf.function if compiled else (lambda f: f)
    return Steps(wrap(train_step_flags), wrap(val_step), train_loss, train_accuracy)


@dataclasses.dataclass
class Evaluation:
    """Validation over documents: loss and accuracy of the window-averaged logits, as the export serves them.

    `score` picks the best checkpoint: the accuracy, or for multi-label the micro-F1 at the neutral threshold
    (`accuracy` is then the subset accuracy, `confusion` None and `labels` the per-label figures).
    """

    loss: float
    accuracy: float
    confusion: np.ndarray | None  # int64 [C, C], rows true, columns predicted
    doc_logits: np.ndarray  # float32 [N, C], each document's logits averaged over its windows
    score: float = 0.0
    macro_f1: float = 0.0
    labels: dict | None = None  # multi-label: trainer.multilabel.label_metrics


def evaluate(steps: Steps, dist_val, labels, num_classes: int, should_stop=None, *,
             class_names: Sequence[str] | None = None, multi_label: bool = False) -> Evaluation | None:
    """Classifies every validation window, then averages each document's logits over its windows (the serving
    graph's rule, `trainer.windows.mean_over_windows`), so the accuracy that picks the best checkpoint is the
    exported model's. `labels`: the validation documents' class ids, in `make_eval_dataset`'s order.
    `should_stop() -> bool` is asked before each batch; once it says True, validation is abandoned (None)."""
    num_docs = len(labels)
    ids, logits = [], []
    for batch in dist_val:
        if should_stop is not None and should_stop():
            return None
        batch_ids, batch_logits = steps.val_step(batch)
        ids.append(batch_ids)
        logits.append(batch_logits)
    ids, logits = tf.concat(ids, axis=0), tf.concat(logits, axis=0)
    seen = tf.math.unsorted_segment_sum(tf.ones_like(ids), ids, num_docs)
    if int(tf.reduce_min(seen)) < 1:
        raise RuntimeError(f"validation saw {int(tf.reduce_sum(tf.cast(seen > 0, tf.int32)))} of {num_docs} "
                           "documents: the validation dataset lost windows")
    doc_logits = mean_over_windows(logits, ids, num_docs)
    if multi_label:
        targets = multi_hot(labels, num_classes)
        loss = tf_keras.losses.binary_crossentropy(targets, doc_logits, from_logits=True)
        decided = tf.sigmoid(doc_logits).numpy() >= NEUTRAL_THRESHOLD
        names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        metrics = label_metrics(targets > 0.5, decided, names)
        return Evaluation(float(tf.reduce_mean(loss)), metrics["subset_accuracy"], None, doc_logits.numpy(),
                          score=metrics["micro_f1"], macro_f1=metrics["macro_f1"], labels=metrics)
    doc_labels = tf.constant(list(labels), tf.int32)
    loss = tf_keras.losses.sparse_categorical_crossentropy(doc_labels, doc_logits, from_logits=True)
    predictions = tf.argmax(doc_logits, axis=-1, output_type=tf.int32)
    confusion = tf.math.confusion_matrix(doc_labels, predictions, num_classes=num_classes, dtype=tf.int64).numpy()
    accuracy = float(np.trace(confusion) / num_docs)
    return Evaluation(float(tf.reduce_mean(loss)), accuracy, confusion, doc_logits.numpy(), score=accuracy,
                      macro_f1=summaries.macro_f1(confusion))


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
    confusion: list[list[int]]  # empty for multi-label
    val_micro_f1: float | None = None  # multi-label: what picked the best checkpoint
    train_rows: int | None = None  # rows trained in the epoch, all workers (None in histories from before)


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
    save_every_seconds: float = 600.0,
    multi_label: bool = False,
) -> list[EpochResult]:
    """Trains from the checkpoint's position to `epochs`, committing history, latest/ and best/ after each epoch
    and saving step checkpoints in between (every `save_every_seconds`, 0 = never; and on SIGINT/SIGTERM).

    Args:
      make_train_ds: (epoch index, steps to skip) -> a distributed dataset (a per-epoch seed keeps resumed runs
        identical to uninterrupted ones).
      val_ds: validation windows (`pipeline.make_eval_dataset`); val_labels: its documents' class ids (for
        `multi_label`, a tuple of class ids per document; the best checkpoint is then chosen on micro-F1).
      schedule: the run's stored learning-rate schedule (for logging the rate each step actually used).
      show_progress: the tqdm bar (only the chief of a multi-worker job shows one).

    Raises:
      Interrupted: after SIGINT/SIGTERM (on any worker), once the step checkpoint is saved.
    """
    results = []
    history = checkpoints.read_history() if checkpoints.is_chief else []
    dist_val = strategy.experimental_distribute_dataset(val_ds)
    # A multi-worker validation is a collective: no worker may leave it alone, so a signal waits for the next step.
    multi_worker = checkpoints.folders is not None
    clock = RunClock(schedule.steps_per_epoch, epochs)
    start = int(checkpoints.state.epoch.numpy())
    skip = int(checkpoints.state.step_in_epoch.numpy())
    with StopSignals() as signals:
        last_save = time.monotonic()

        def local_flags():
            due = save_every_seconds > 0 and time.monotonic() - last_save >= save_every_seconds
            return (int(due), int(signals.signum == signal.SIGINT), int(signals.signum == signal.SIGTERM))

        def save_and_maybe_stop(epoch, done, agreed):
            """Saves a step checkpoint if asked (or stopping) and raises Interrupted if asked to stop."""
            nonlocal last_save
            step = int(optimizer.iterations.numpy())
            stopping = agreed[STOP_INT] or agreed[STOP_TERM]
            if any(agreed) and checkpoints.last_step_saved != step:
                checkpoints.save_step(done, step)
                if not stopping:  # when stopping, Interrupted's one line says it
                    log.info("saved step checkpoint: epoch %d, step %d/%d; about %s left in the run", epoch, done,
                             schedule.steps_per_epoch,
                             format_duration(clock.remaining(epoch=epoch, steps_done=done)))
            if any(agreed):
                last_save = time.monotonic()
            if stopping:
                logger.close()  # the run stops here: its TensorBoard events must reach the disk
                raise Interrupted(signal.SIGTERM if agreed[STOP_TERM] else signal.SIGINT, epoch, done)

        for epoch in range(start + 1, epochs + 1):
            started = time.perf_counter()
            if skip == 0:
                steps.reset()  # else the running metrics came back with the step checkpoint
            else:
                log.info("resuming epoch %d after step %d/%d (step checkpoint)", epoch, skip, schedule.steps_per_epoch)
            dist_train = make_train_ds(epoch, skip)
            bar = tqdm(dist_train, total=schedule.steps_per_epoch, initial=skip, desc=f"epoch {epoch}/{epochs}",
                       unit="step", mininterval=1.0, dynamic_ncols=True, disable=not show_progress)
            done = skip
            for batch in bar:
                if signals.signum is not None and not multi_worker:  # came between two steps: stop before the next
                    bar.close()
                    save_and_maybe_stop(epoch, done, [False, *(bool(f) for f in local_flags()[1:])])
                tick = time.perf_counter()
                loss, agreed = steps.train_step_flags(batch, tf.constant(local_flags(), tf.int32))
                loss, agreed = float(loss), [float(v) > 0 for v in agreed.numpy()]
                clock.record_step(time.perf_counter() - tick)
                done += 1
                if not math.isfinite(loss):
                    raise FloatingPointError(f"training loss became {loss} at epoch {epoch}: lower --learning-rate")
                step = int(optimizer.iterations.numpy())  # updates applied so far; this one had index step - 1
                if not multi_worker:  # alone, decide on this step's state; together, on the flags all saw
                    agreed = [a or bool(f) for a, f in zip(agreed, local_flags(), strict=True)]
                bar.set_postfix(loss=f"{loss:.4f}", acc=f"{float(steps.train_accuracy.result()):.4f}",
                                run_left=format_duration(clock.remaining(epoch=epoch, steps_done=done)), refresh=False)
                if step % steps_per_summary == 0:
                    logger.step(step, loss, schedule.rate_at(step - 1))
                if agreed[STOP_INT] or agreed[STOP_TERM]:
                    bar.close()
                save_and_maybe_stop(epoch, done, agreed)
                faults.maybe_kill("step", step)
                faults.maybe_signal(step)
            bar.close()
            skip = 0
            val_started = time.perf_counter()
            stop_requested = None if multi_worker else (lambda: signals.signum is not None)
            evaluation = evaluate(steps, dist_val, val_labels, num_classes, should_stop=stop_requested,
                                  class_names=class_names, multi_label=multi_label)
            if evaluation is None:  # a signal during validation: keep the trained epoch as a step save, stop
                save_and_maybe_stop(epoch, done, [False, *(bool(f) for f in local_flags()[1:])])
            clock.record_validation(time.perf_counter() - val_started)
            val, confusion = {"loss": evaluation.loss, "accuracy": evaluation.accuracy}, evaluation.confusion
            train = {"loss": float(steps.train_loss.result()), "accuracy": float(steps.train_accuracy.result())}
            train_rows = int(steps.train_loss.count.numpy())  # summed over replicas and workers
            logger.epoch(epoch, train, val)
            try:
                logger.adam_moments(epoch, head_adam_moments(optimizer, model))
            except KeyError:  # resumed after the epoch's last step: Adam builds its slots at its first update
                log.info("no Adam moment histograms for epoch %d: no update ran in this process yet", epoch)
            if confusion is not None:
                logger.confusion(epoch, confusion, class_names)
            else:
                logger.label_metrics(epoch, evaluation.labels)
            seconds = time.perf_counter() - started
            micro_f1 = evaluation.score if multi_label else None

            def entry(improved, epoch=epoch, train=train, val=val, evaluation=evaluation, seconds=seconds,
                      micro_f1=micro_f1, train_rows=train_rows):
                matrix = [] if evaluation.confusion is None else evaluation.confusion.tolist()
                result = dataclasses.asdict(EpochResult(epoch, train["loss"], train["accuracy"], val["loss"],
                                                        val["accuracy"], evaluation.macro_f1, improved,
                                                        seconds, matrix, micro_f1, train_rows))
                if micro_f1 is None:  # single-label history keeps its keys
                    del result["val_micro_f1"]
                return result

            improved = checkpoints.end_epoch(evaluation.score, history, entry)
            last_save = time.monotonic()
            results.append(EpochResult(**history[-1]))
            best = float(checkpoints.state.best_val_accuracy.numpy())
            verdict = "new best, saved best checkpoint" if improved else f"did not improve on best {best:.4f}"
            log.info("epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f%s macro-F1 %.4f | %s (%.0f s); "
                     "about %s left in the run", epoch, epochs, train["loss"], train["accuracy"], val["loss"],
                     val["accuracy"], "" if micro_f1 is None else f" (subset) micro-F1 {micro_f1:.4f}",
                     evaluation.macro_f1, verdict, seconds,
                     format_duration(clock.remaining(epoch=epoch + 1, steps_done=0) if epoch < epochs
                                     else clock.export_seconds))
        if signals.signum is not None and not multi_worker:  # came during the last commit: all is saved
            logger.close()
            raise Interrupted(signals.signum, epochs, schedule.steps_per_epoch)
    return results


def build_training(strategy, build_model, *, learning_rate, loss_scaling: bool, seed: int = 0,
                   class_weights: Sequence[float] | None = None, multi_label: bool = False):
    """Creates model, optimizer, checkpoint state and steps inside the strategy's scope; `seed` seeds dropout.

    `loss_scaling` (float16 only, see trainer/precision.py) wraps Adam in a dynamic LossScaleOptimizer.
    """
    with strategy.scope():
        model = build_model()
        optimizer = tf_keras.optimizers.Adam(learning_rate=learning_rate)
        if loss_scaling:
            optimizer = tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
        # Adam's slots exist before any restore, so a checkpoint restores them at once: otherwise the restore is
        # deferred to the first update, which fails if that checkpoint (a stale step save) was removed meanwhile.
        optimizer.build(model.trainable_variables)
        steps = make_steps(strategy, model, optimizer, seed=seed, loss_scaling=loss_scaling,
                           class_weights=class_weights, multi_label=multi_label)
        state = make_state(model, optimizer, steps.metrics())
    return model, optimizer, state, steps
