"""TensorBoard logging for one training run: the seed notebook's tags plus what a reviewer of a run needs."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorboard.plugins.hparams import api as hp  # noqa: E402

# Tags, shared with tests so a renamed tag fails loudly.
EPOCH_LOSS = "epoch_loss"
EPOCH_ACCURACY = "epoch_accuracy"
STEP_LOSS = "step_loss"
LEARNING_RATE = "learning_rate"
ADAM_M = "hist_dense_adam_first_moment"
ADAM_V = "hist_dense_adam_second_moment"
CONFUSION = "confusion_matrix"
BEST_VAL_ACCURACY = "best_val_accuracy"
VAL_MACRO_F1 = "val_macro_f1"
VAL_MICRO_F1 = "val_micro_f1"  # multi-label: what picks the best checkpoint
LABEL_PRECISION, LABEL_RECALL = "label_precision", "label_recall"  # multi-label, "<tag>/<label name>"


class RunLogger:
    """Writers of one run: `<logdir>/<run>/train`, `/validation` (the seed's writers) and `/` for HParams."""

    def __init__(self, run_dir: str | Path, *, enabled: bool = True):
        """`enabled=False` (non-chief workers of a multi-worker job) writes nothing and creates no folder."""
        self.run_dir = Path(run_dir)
        make = tf.summary.create_file_writer if enabled else (lambda _path: tf.summary.create_noop_writer())
        self.train = make(str(self.run_dir / "train"))
        self.validation = make(str(self.run_dir / "validation"))
        self.run = make(str(self.run_dir))

    def step(self, step: int, loss: float, learning_rate: float) -> None:
        with self.train.as_default(step=step):
            tf.summary.scalar(STEP_LOSS, loss)
            tf.summary.scalar(LEARNING_RATE, learning_rate)

    def epoch(self, epoch: int, train: dict[str, float], val: dict[str, float]) -> None:
        for writer, values in ((self.train, train), (self.validation, val)):
            with writer.as_default(step=epoch):
                tf.summary.scalar(EPOCH_LOSS, values["loss"])
                tf.summary.scalar(EPOCH_ACCURACY, values["accuracy"])
            writer.flush()

    def adam_moments(self, epoch: int, moments: dict[str, tuple[tf.Variable, tf.Variable]]) -> None:
        """Histograms of Adam's m and v for the dense head (`kernel` under the seed's tag, others suffixed)."""
        with self.train.as_default(step=epoch):
            for name, (m, v) in moments.items():
                suffix = "" if name == "kernel" else f"_{name}"
                tf.summary.histogram(ADAM_M + suffix, m)
                tf.summary.histogram(ADAM_V + suffix, v)
        self.train.flush()

    def confusion(self, epoch: int, matrix: np.ndarray, class_names: list[str]) -> None:
        with self.validation.as_default(step=epoch):
            tf.summary.image(CONFUSION, confusion_png(matrix, class_names)[tf.newaxis], step=epoch)
            tf.summary.scalar(VAL_MACRO_F1, macro_f1(matrix))
        self.validation.flush()

    def label_metrics(self, epoch: int, metrics: dict) -> None:
        """Multi-label validation (`trainer.multilabel.label_metrics`): micro/macro-F1 and each label's P/R."""
        with self.validation.as_default(step=epoch):
            tf.summary.scalar(VAL_MICRO_F1, metrics["micro_f1"])
            tf.summary.scalar(VAL_MACRO_F1, metrics["macro_f1"])
            for name, m in metrics["per_class"].items():
                tf.summary.scalar(f"{LABEL_PRECISION}/{name}", m["precision"])
                tf.summary.scalar(f"{LABEL_RECALL}/{name}", m["recall"])
        self.validation.flush()

    def hparams(self, hparams: dict[str, object], run_name: str, best_val_accuracy: float, epoch: int) -> None:
        """The run's settings and its final metric, for the HParams dashboard's table and parallel plot."""
        with self.run.as_default(step=epoch):
            hp.hparams(hparams, trial_id=run_name)
            tf.summary.scalar(BEST_VAL_ACCURACY, best_val_accuracy)
        self.run.flush()

    def close(self) -> None:
        for writer in (self.train, self.validation, self.run):
            writer.close()


def confusion_png(matrix: np.ndarray, class_names: list[str]) -> tf.Tensor:
    """Renders a confusion matrix (rows = true, columns = predicted) to a uint8 RGBA image [H, W, 4]."""
    fig, ax = plt.subplots(figsize=(5, 5), dpi=80)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return tf.image.decode_png(buffer.getvalue(), channels=4)


def per_class_metrics(matrix: np.ndarray, class_names: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per class from a confusion matrix (rows = true labels)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(matrix)
    predicted = matrix.sum(axis=0)
    support = matrix.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support, strict=True)}


def macro_f1(matrix: np.ndarray) -> float:
    names = [str(i) for i in range(len(matrix))]
    return float(np.mean([m["f1"] for m in per_class_metrics(matrix, names).values()]))
