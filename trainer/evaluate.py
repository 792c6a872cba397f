"""Scores an exported version on labelled texts through its own `serving_default` graph: what clients get.

Used twice: at the end of a run, once, on the held-out test set (never to choose a checkpoint), and by
`python -m trainer evaluate --model models/bertbc[/N] --data FILE` for any version on any labelled file, so two
versions can be compared on a user's own gold set.

The report: accuracy, macro-F1, per-class precision/recall/F1/support, the confusion matrix (rows true,
columns predicted, in the model's class order) and the misclassified rows (id, true, predicted, confidence).
A multi-label model (its signature has a `labels` output) is scored on its `labels` answer against each row's
label set: micro-F1, macro-F1, subset accuracy, per-label precision/recall/F1/support and the rows whose set
differs (`multi_label_report`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger("bertbc.trainer")

# Misclassified rows listed in a report (all are counted in the confusion matrix).
MAX_ERRORS = 200


@dataclasses.dataclass(frozen=True)
class Predictions:
    labels: list[str]  # the `label` output per text
    probabilities: np.ndarray  # float32 [N, C], the `probabilities` output
    label_sets: list[tuple[str, ...]] | None = None  # a multi-label model's `labels` output, padding dropped


def predict(loaded, texts: Sequence[bytes], *, batch_size: int = 32) -> Predictions:
    """Calls `serving_default` on raw texts in batches (at most TF Serving's max_batch_size per call)."""
    import tensorflow as tf  # noqa: PLC0415

    fn = loaded.signatures["serving_default"]
    (input_name,) = fn.structured_input_signature[1].keys()
    multi = "labels" in fn.structured_outputs
    labels, probs, sets = [], [], []
    for start in range(0, len(texts), batch_size):
        out = fn(**{input_name: tf.constant(list(texts[start:start + batch_size]), tf.string)})
        labels.extend(label.decode("utf-8") for label in out["label"].numpy())
        probs.append(out["probabilities"].numpy())
        if multi:
            sets.extend(tuple(n.decode("utf-8") for n in row if n) for row in out["labels"].numpy())
    width = probs[0].shape[-1] if probs else 0
    return Predictions(labels, np.concatenate(probs) if probs else np.zeros((0, width), np.float32),
                       sets if multi else None)


def multi_label_report(true: Sequence[Sequence[str]], predicted: Predictions, class_names: Sequence[str],
                       ids: Sequence[str]) -> dict:
    """The multi-label report of a model's `labels` answers against each row's true label set."""
    from trainer.multilabel import label_metrics  # noqa: PLC0415

    names = list(class_names)
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({name for row in true for name in row} - set(index))
    if unknown:
        raise ValueError(f"label(s) {unknown[:10]} are not among the model's labels {names[:20]}")
    want = np.zeros((len(true), len(names)), bool)
    got = np.zeros_like(want)
    for row, (t, p) in enumerate(zip(true, predicted.label_sets, strict=True)):
        want[row, [index[n] for n in t]] = True
        got[row, [index[n] for n in p]] = True
    report = label_metrics(want, got, names)
    wrong = np.flatnonzero(np.any(want != got, axis=1))
    report.update({
        "multi_label": True,
        "class_names": names,
        "misclassified": [{"id": ids[i], "true": sorted(true[i]), "predicted": list(predicted.label_sets[i])}
                          for i in wrong[:MAX_ERRORS]],
        "misclassified_count": int(len(wrong)),
    })
    return report


def classification_report(true: Sequence[str], predicted: Predictions, class_names: Sequence[str],
                          ids: Sequence[str]) -> dict:
    """The report (see the module docstring) of single-label predictions against true class names."""
    names = list(class_names)
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(true) - set(index))
    if unknown:
        raise ValueError(f"label(s) {unknown[:10]} are not among the model's classes {names[:20]}")
    t = np.array([index[x] for x in true], np.int64)
    p = np.array([index[x] for x in predicted.labels], np.int64)
    confusion = np.zeros((len(names), len(names)), np.int64)
    np.add.at(confusion, (t, p), 1)
    tp = np.diag(confusion).astype(float)
    support, claimed = confusion.sum(axis=1), confusion.sum(axis=0)
    precision = np.divide(tp, claimed, out=np.zeros_like(tp), where=claimed > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    present = support > 0  # macro-F1 over the classes the set has (a class absent from it says nothing)
    wrong = np.flatnonzero(t != p)
    errors = [{"id": ids[i], "true": names[t[i]], "predicted": names[p[i]],
               "confidence": round(float(predicted.probabilities[i, p[i]]), 4)} for i in wrong[:MAX_ERRORS]]
    return {
        "documents": int(len(t)),
        "accuracy": float((t == p).mean()) if len(t) else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {name: {"precision": round(float(precision[i]), 4), "recall": round(float(recall[i]), 4),
                             "f1": round(float(f1[i]), 4), "support": int(support[i])}
                      for i, name in enumerate(names)},
        "class_names": names,
        "confusion": confusion.tolist(),
        "misclassified": errors,
        "misclassified_count": int(len(wrong)),
    }


def evaluate_saved_model(model_dir: str | Path, texts: Sequence[bytes], true: Sequence[str] | Sequence[tuple],
                         ids: Sequence[str]) -> dict:
    """Loads `model_dir` (a version folder) and returns its report on `texts` with true class names `true` (one
    name per text; a tuple of names per text for a multi-label model, which a single name also fills)."""
    from trainer.gate import class_names_of, load_serving_graph  # noqa: PLC0415

    loaded = load_serving_graph(model_dir)
    names = class_names_of(model_dir, loaded)
    if names is None:
        raise ValueError(f"{model_dir}: the model's class names are unknown (no class_names, no model card)")
    predictions = predict(loaded, texts)
    if predictions.label_sets is not None:
        sets = [(t,) if isinstance(t, str) else tuple(t) for t in true]
        report = multi_label_report(sets, predictions, names, ids)
    else:
        several = next((i for i, t in enumerate(true) if not isinstance(t, str) and len(t) != 1), None)
        if several is not None:
            raise ValueError(f"row {ids[several]} has {len(true[several])} labels, but {model_dir} is a single-label "
                             "model; score it on one label per row")
        report = classification_report([t if isinstance(t, str) else t[0] for t in true], predictions, names, ids)
    report["model"] = str(model_dir)
    return report


def format_report(report: dict, *, what: str) -> str:
    """A few lines for the log and the terminal: the headline, then the weakest classes."""
    if report.get("multi_label"):
        lines = [f"{what}: micro-F1 {report['micro_f1']:.4f}, macro-F1 {report['macro_f1']:.4f}, subset accuracy "
                 f"{report['subset_accuracy']:.4f} on {report['documents']} documents ({report['misclassified_count']}"
                 " with another label set)"]
    else:
        lines = [f"{what}: accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f} on "
                 f"{report['documents']} documents ({report['misclassified_count']} misclassified)"]
    per_class = sorted(report["per_class"].items(), key=lambda kv: kv[1]["f1"])
    for name, m in per_class[:5]:
        if m["support"]:
            lines.append(f"  {name}: precision {m['precision']:.3f} recall {m['recall']:.3f} F1 {m['f1']:.3f} "
                         f"(support {m['support']})")
    return "\n".join(lines)


def resolve_version(model: str | Path) -> Path:
    """`models/bertbc/3` as given; `models/bertbc` -> its newest complete numeric version."""
    path = Path(model)
    if (path / "saved_model.pb").is_file():
        return path
    versions = sorted((int(p.name), p) for p in path.iterdir()
                      if p.name.isdigit() and (p / "saved_model.pb").is_file()) if path.is_dir() else []
    if not versions:
        raise FileNotFoundError(f"--model {model}: neither a SavedModel nor a base path holding numbered versions")
    return versions[-1][1]


def write_report(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=True))
    return path
