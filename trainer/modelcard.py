"""The model card written into every exported version: what was trained on what, and how well it does."""

from __future__ import annotations

import dataclasses
import datetime
import platform

import numpy as np
import tensorflow as tf
import tf_keras

from trainer import multilabel, summaries, weights


def _served(module, texts, output: str, batch_size: int) -> list[np.ndarray]:
    return [module.serve(tf.constant(list(texts[start:start + batch_size]), tf.string))[output].numpy()
            for start in range(0, len(texts), batch_size)]


def predict_module(module, texts, batch_size: int = 32) -> np.ndarray:
    """Class ids [N] from the EXPORT path (raw text -> serve), batch by batch."""
    predicted = _served(module, texts, "class_id", batch_size)
    return np.concatenate(predicted) if predicted else np.zeros([0], np.int64)


def predict_probabilities(module, texts, batch_size: int = 32) -> np.ndarray:
    """The `probabilities` output [N, C] of the EXPORT path, batch by batch."""
    out = _served(module, texts, "probabilities", batch_size)
    return np.concatenate(out) if out else np.zeros([0, int(module.class_names.shape[0])], np.float32)


def multi_label_section(module, corpus, batch_size: int = 32, probabilities: np.ndarray | None = None) -> dict:
    """A multi-label card's figures on validation, read through the export: micro-F1 at the neutral threshold
    (what chose the checkpoint) and every metric at the tuned thresholds the graph serves. `probabilities`:
    the module's validation answers when the caller has them already (they do not depend on the thresholds)."""
    names = list(corpus.class_names)
    true = multilabel.multi_hot(corpus.val_labels, len(names)) > 0.5
    if probabilities is None:
        probabilities = predict_probabilities(module, corpus.val_texts, batch_size)
    thresholds = module.thresholds.numpy()
    neutral = multilabel.label_metrics(true, probabilities >= multilabel.NEUTRAL_THRESHOLD, names)
    tuned = multilabel.label_metrics(true, probabilities >= thresholds, names)
    return {
        "multi_label": True,
        "thresholds": {n: round(float(t), 4) for n, t in zip(names, thresholds, strict=True)},
        "export_val_micro_f1": neutral["micro_f1"],
        "export_val_tuned": {k: tuned[k] for k in ("micro_f1", "macro_f1", "subset_accuracy")},
        "per_class": tuned["per_class"],
    }


def evaluate_module(module, texts, labels, num_classes: int, batch_size: int = 32) -> np.ndarray:
    """Confusion matrix [C, C] (rows = true) of the EXPORT path (raw text → serve) on the given texts."""
    return confusion_matrix(labels, predict_module(module, texts, batch_size), num_classes)


def confusion_matrix(labels, predicted, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return matrix


def first_line(text: bytes, limit: int = 120) -> str:
    line = next((x for x in text.decode("utf-8", "replace").splitlines() if x.strip()), "")
    return line.strip()[:limit]


def validation_report(corpus, predicted: np.ndarray) -> dict:
    """Accuracy without the validation documents that also sit in train, and every misclassified document."""
    names = list(corpus.class_names)
    leaked = np.asarray(corpus.val_in_train(), bool)
    correct = np.asarray(corpus.val_labels) == predicted
    clean = ~leaked
    return {
        "val_without_train_duplicates": {"docs": int(clean.sum()),
                                         "accuracy": float(correct[clean].mean()) if clean.any() else None},
        "val_docs_also_in_train": int(leaked.sum()),
        "val_errors": [{"path": corpus.val_paths[i], "first_line": first_line(corpus.val_texts[i]),
                        "true": names[corpus.val_labels[i]], "predicted": names[int(predicted[i])],
                        "also_in_train": bool(leaked[i])}
                       for i in np.flatnonzero(~correct)],
    }


def build_model_card(cfg, corpus, spec, module, *, history, run_name, best_epoch, best_val_accuracy,
                     train_seconds, val_probabilities: np.ndarray | None = None) -> dict:
    """Collects encoder, hyper-parameters, data fingerprint, metrics and environment as a JSON-able dict.

    A multi-label model (`corpus.multi_label`) gets `multi_label_section` instead of the single-label figures
    (accuracy, confusion matrix, misclassified documents); `best_val_accuracy` then holds its best micro-F1.
    """
    names = list(corpus.class_names)
    outputs = {"probabilities": f"DT_FLOAT [-1, {len(names)}]", "class_id": "DT_INT64 [-1]",
               "label": "DT_STRING [-1]"}
    if corpus.multi_label:
        outputs["labels"] = f"DT_STRING [-1, {len(names)}]"
        metrics = multi_label_section(module, corpus, cfg.batch_size, val_probabilities)
    else:
        predicted = predict_module(module, corpus.val_texts, cfg.batch_size)
        matrix = confusion_matrix(corpus.val_labels, predicted, len(names))
        per_class = summaries.per_class_metrics(matrix, names)
        metrics = {
            "export_val_accuracy": float(np.trace(matrix) / max(matrix.sum(), 1)),
            "export_val_macro_f1": float(np.mean([m["f1"] for m in per_class.values()])),
            "per_class": per_class,
            **validation_report(corpus, predicted),
            "confusion_matrix": {"rows_true_columns_predicted": names, "matrix": matrix.tolist()},
        }
    return {
        "model_name": cfg.model_name,
        "run_name": run_name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "encoder": {"name": spec.name, "encoder_handle": spec.encoder_handle,
                    "preprocess_handle": spec.preprocess_handle},
        "hyperparameters": cfg.hparams(),
        "config": dataclasses.asdict(cfg),
        "data": {"fingerprint": corpus.fingerprint, "class_names": names,
                 "train_docs": corpus.num_train, "val_docs": len(corpus.val_texts),
                 "train_class_counts": corpus.class_counts("train"),
                 "val_class_counts": corpus.class_counts("val"),
                 "invalid_utf8_docs": len(corpus.invalid_utf8_paths),
                 "class_weights": weights.by_name(cfg, corpus)},
        "signature": {"serving_default": {"inputs": {"text": "DT_STRING [-1]"}, "outputs": outputs}},
        "epochs": [{k: h[k] for k in ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                                      "val_macro_f1", "val_micro_f1", "improved", "seconds") if k in h}
                   for h in history],
        "best_epoch": best_epoch,
        "best_val_accuracy": best_val_accuracy,
        **metrics,
        "environment": {"tensorflow": tf.__version__, "tf_keras": tf_keras.__version__,
                        "python": platform.python_version(), "machine": platform.machine(),
                        "devices": [d.name for d in tf.config.list_logical_devices()]},
        "train_seconds": None if train_seconds is None else round(train_seconds, 1),
    }
