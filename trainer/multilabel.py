"""Multi-label classification (`--multi-label`): targets, metrics and per-label decision thresholds.

A multi-label model has a sigmoid per label instead of one softmax: each label is a yes/no question of its own,
so a row may get several labels or none. Training minimises binary cross-entropy; the checkpoint is chosen on
micro-F1 at the neutral threshold 0.5; after training, each label's threshold is tuned on the validation split
(`tune_thresholds`) and baked into the exported graph, so the served `labels` output are the names whose
probability reaches their own threshold. The test set never takes part in either choice.

Metrics follow scikit-learn's definitions (micro-F1 pools every label's counts; macro-F1 is the mean of the
per-label F1s over the labels that occur in the true rows; subset accuracy counts rows whose label set is exact).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NEUTRAL_THRESHOLD = 0.5
# Candidate thresholds: fine enough to matter, coarse enough that validation noise does not pick a fluke.
THRESHOLD_GRID = tuple(round(x, 2) for x in np.arange(0.05, 0.951, 0.05))


def multi_hot(label_ids: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """float32 [N, C]: 1 where the row has the label."""
    targets = np.zeros((len(label_ids), num_classes), np.float32)
    for row, ids in enumerate(label_ids):
        targets[row, list(ids)] = 1.0
    return targets


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    tp, fp, fn = (np.asarray(x, float) for x in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)


def label_metrics(true: np.ndarray, predicted: np.ndarray, class_names: Sequence[str]) -> dict:
    """Micro/macro-F1, subset accuracy and per-label precision/recall/F1/support of boolean [N, C] decisions."""
    true, predicted = np.asarray(true, bool), np.asarray(predicted, bool)
    tp = (true & predicted).sum(axis=0)
    fp = (~true & predicted).sum(axis=0)
    fn = (true & ~predicted).sum(axis=0)
    support = true.sum(axis=0)
    f1 = _f1(tp, fp, fn)
    claimed = tp + fp
    precision = np.divide(tp, claimed, out=np.zeros(len(tp)), where=claimed > 0)
    recall = np.divide(tp, support, out=np.zeros(len(tp)), where=support > 0)
    present = support > 0
    return {
        "documents": int(true.shape[0]),
        "micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum())),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "subset_accuracy": float(np.all(true == predicted, axis=1).mean()) if len(true) else 0.0,
        "per_class": {name: {"precision": round(float(precision[i]), 4), "recall": round(float(recall[i]), 4),
                             "f1": round(float(f1[i]), 4), "support": int(support[i])}
                      for i, name in enumerate(class_names)},
    }


def tune_thresholds(true: np.ndarray, probabilities: np.ndarray,
                    grid: Sequence[float] = THRESHOLD_GRID) -> np.ndarray:
    """float32 [C]: per label, the grid threshold with the best validation F1 (ties: the one closest to 0.5).

    A label without a positive validation row keeps 0.5: there is nothing to tune it on.
    """
    true, probabilities = np.asarray(true, bool), np.asarray(probabilities, np.float64)
    thresholds = np.full(true.shape[1], NEUTRAL_THRESHOLD, np.float32)
    order = sorted(grid, key=lambda t: (abs(t - NEUTRAL_THRESHOLD), t))
    for label in range(true.shape[1]):
        positives = true[:, label]
        if not positives.any():
            continue
        best, best_f1 = NEUTRAL_THRESHOLD, -1.0
        for threshold in order:
            decided = probabilities[:, label] >= threshold
            f1 = float(_f1((positives & decided).sum(), (~positives & decided).sum(), (positives & ~decided).sum()))
            if f1 > best_f1 + 1e-12:
                best, best_f1 = threshold, f1
        thresholds[label] = best
    return thresholds
