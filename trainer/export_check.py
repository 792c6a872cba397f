"""The export's checks before anything is published: the serving graph answers like the trained model.

The serving graph is not the training graph: it rebuilds the encoder (``trainer.serving_encoder``), packs each
request to a length bucket (32, 64, 128, ... ``trainer.preprocessing``), reads long texts in windows and averages
their logits (``trainer.windows``), then applies softmax and looks up labels. Long validation articles fill every
position, so their attention masks are all ones and a dropped mask would pass unseen; the checks therefore use
probe texts cut to land in EVERY bucket, each batch mixing a short text with one that fills the bucket, so the
short rows carry padding that only a correct mask hides:

1. ``check_export`` / buckets: the served graph's logits at the bucket length vs the trained Keras model on the
   same texts packed to the full trained length (padding masked), relative to the largest logit;
2. ``check_export`` / serve: the whole ``serve`` signature (windows, ``mean_over_windows``, softmax, class id,
   label) vs the Keras model on full-length windows averaged on the host;
3. ``check_accuracy``: the export's validation accuracy vs training's evaluation of the same checkpoint.

Tolerances per ``--export-precision`` (``TOLERANCES``). fp32 must be the trained math up to float rounding
(measured: <= 2.1e-7 relative on logits, tiny-random at 128 tokens). bf16 keeps 8 bits of mantissa: measured
<= 2.1e-3 relative on logits (tiny-random, 2 layers, 3 random heads) and a largest probability difference of
0.015 for MiniLM on BBC validation (docs/benchmarks.md, ``make bench-parity``); the bounds, 5e-2 and 5e-2, leave
a margin of 24x and 3.3x for deeper encoders and other data. A dropped attention mask moves logits by far more
(tests/test_export.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import tensorflow as tf

from trainer.export import serving_features
from trainer.model import INPUT_NAMES
from trainer.preprocessing import bucket_lengths

log = logging.getLogger("bertbc.trainer")


# Tests only (tests/test_multiworker.py): set in one process's environment, its export check fails like a
# real defect would, after training, so the chief's failure path can be exercised.
FAIL_FOR_TESTS = "BERTBC_TEST_FAIL_EXPORT_CHECK"


class ExportCheckError(ValueError):
    """The serving graph does not answer like the trained model; the message names the check and the figures."""


@dataclasses.dataclass(frozen=True)
class Tolerance:
    logits: float         # largest |served - trained| logit, relative to the largest trained logit (at least 1)
    probabilities: float  # largest |served - trained| probability


TOLERANCES = {"fp32": Tolerance(logits=1e-4, probabilities=1e-4),
              "bf16": Tolerance(logits=5e-2, probabilities=5e-2)}


@dataclasses.dataclass(frozen=True)
class CheckReport:
    bucket_diffs: dict[int, float]  # bucket length -> largest relative logit difference of its probe batch
    serve_diff: float               # largest probability difference of the full serve path
    texts: int                      # texts served in the check

    def summary(self) -> str:
        buckets = ", ".join(f"{length}: {diff:.1e}" for length, diff in sorted(self.bucket_diffs.items()))
        return f"logits per bucket {{{buckets}}}, serve probabilities {self.serve_diff:.1e} on {self.texts} texts"


def probe_batches(preprocessor, texts) -> dict[int, list[bytes]]:
    """One batch per bucket length L: a headline-sized text, one half-way into the bucket and one filling it.

    Args:
      preprocessor: the export's ``Preprocessor``.
      texts: validation documents (bytes); joined and cut into word prefixes, so any corpus reaches every bucket.

    Returns:
      {bucket length: [short, medium, fill]} as bytes; the longest text of batch L needs bucket L.
    """
    source = b" ".join(t if isinstance(t, bytes) else t.encode() for t in texts[:64])
    words = source.split()[:preprocessor.seq_length]  # a word is at least one word piece: enough to fill
    prefixes = [b" ".join(words[:k]) for k in range(len(words) + 1)]
    counts = preprocessor.wordpieces(tf.constant(prefixes)).row_lengths().numpy()  # grows with k

    def longest(target: int) -> bytes:
        return prefixes[int(np.searchsorted(counts, target, side="right")) - 1]

    buckets = bucket_lengths(preprocessor.seq_length)
    short = longest(min(6, buckets[0] - 2))
    batches, previous = {}, 0
    for length in buckets:
        fill = longest(length - 2)
        if counts[prefixes.index(fill)] + 2 <= previous:
            log.warning("the export check found no probe text for bucket %d (the validation texts are too short)",
                        length)
            continue
        batches[length] = [short, longest(max(1, (previous + length) // 2 - 2)), fill]
        previous = length
    return batches


def _relative(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want), initial=0.0) / max(float(np.max(np.abs(want), initial=0.0)), 1.0))


def _host_probabilities(module, classifier, texts: list[bytes]) -> np.ndarray:
    """The reference for ``serve``: the Keras model on full-length windows, logits averaged per text on the host,
    then softmax (or, multi-label, a sigmoid per label)."""
    features, doc_index = serving_features(module.preprocessor, tf.constant(texts), max_windows=module.max_windows,
                                           overlap=module.window_overlap, bucket=False)
    window_logits = tf.cast(classifier(features, training=False), tf.float64).numpy()
    if doc_index is None:
        logits = window_logits
    else:
        index = doc_index.numpy()
        logits = np.zeros([len(texts), window_logits.shape[1]])
        np.add.at(logits, index, window_logits)
        logits /= np.maximum(np.bincount(index, minlength=len(texts)), 1)[:, None]
    if getattr(module, "multi_label", False):
        return 1.0 / (1.0 + np.exp(-logits))
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def check_export(module, classifier, texts, tolerance: Tolerance | None = None) -> CheckReport:
    """Compares the served graph with the trained Keras model; raises ExportCheckError beyond `tolerance`.

    Args:
      module: the ``ServingModule`` about to be saved.
      classifier: the trained Keras model (static trained length) whose best checkpoint the module serves.
      texts: validation documents (bytes): probe texts are cut from them, and the first four are served whole.
      tolerance: defaults to ``TOLERANCES[module.precision]``.

    Returns:
      The measured differences (logged and written to the model card).
    """
    if os.environ.get(FAIL_FOR_TESTS):
        raise ExportCheckError(f"export check: failed on purpose ({FAIL_FOR_TESTS} is set)")
    tolerance = tolerance or TOLERANCES[module.precision]
    preprocessor = module.preprocessor
    batches = probe_batches(preprocessor, texts)
    bucket_diffs = {}
    for length, batch in batches.items():
        full = preprocessor(tf.constant(batch))
        bucketed = preprocessor.bucketed(tf.constant(batch))
        if bucketed["input_mask"].shape[1] != length:
            raise ExportCheckError(f"export check: a batch whose longest text needs bucket {length} was packed "
                                   f"to {bucketed['input_mask'].shape[1]} tokens; trainer/preprocessing.py "
                                   "buckets wrongly")
        want = tf.cast(classifier(full, training=False), tf.float32).numpy()
        got = module.classify_features(*(bucketed[name] for name in INPUT_NAMES)).numpy()
        bucket_diffs[length] = _relative(got, want)
        if bucket_diffs[length] > tolerance.logits:
            raise ExportCheckError(
                f"export check: at bucket length {length} the serving graph's logits differ from the trained "
                f"model's by {bucket_diffs[length]:.2e} (relative, > {tolerance.logits} for {module.precision}); "
                "the rebuilt encoder mishandles padding (attention mask) or no longer matches the encoder")
    class_names = [c.decode() for c in module.class_names.numpy()]
    serve_diff, served = 0.0, 0
    for batch in [*batches.values(), [t if isinstance(t, bytes) else t.encode() for t in texts[:4]]]:
        if not batch:
            continue
        want = _host_probabilities(module, classifier, batch)
        out = module.serve(tf.constant(batch))
        got = out["probabilities"].numpy()
        served += len(batch)
        serve_diff = max(serve_diff, float(np.max(np.abs(got - want))))
        top2 = np.sort(want, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 2 * tolerance.probabilities  # a near tie may flip within tolerance
        class_id = out["class_id"].numpy()
        labels = [label.decode() for label in out["label"].numpy()]
        if serve_diff > tolerance.probabilities or np.any(class_id[clear] != want.argmax(axis=1)[clear]) \
                or labels != [class_names[i] for i in class_id]:
            raise ExportCheckError(
                f"export check: the serve signature (windows={module.max_windows}) answers unlike the trained model "
                f"with host-side window averaging: probabilities differ by {serve_diff:.2e} (> "
                f"{tolerance.probabilities} for {module.precision}), class ids {class_id.tolist()} vs "
                f"{want.argmax(axis=1).tolist()}, labels {labels}")
    return CheckReport(bucket_diffs, serve_diff, served)


def check_accuracy(export_accuracy: float, trained_accuracy: float, docs: int, slack_docs: float = 1.0,
                   metric: str = "accuracy", unit: str = "documents") -> None:
    """Refuses an export whose validation accuracy is more than `slack_docs` documents away from training's.

    Both figures are of the same checkpoint on the same documents read the same way, so they may differ only by
    float rounding flipping a near tie; more means the export computes something else.
    """
    differ = abs(export_accuracy - trained_accuracy) * docs
    if differ > slack_docs + 1e-6:
        raise ExportCheckError(
            f"export check: the export's validation {metric} {export_accuracy:.4f} differs from training's evaluation "
            f"of the same checkpoint, {trained_accuracy:.4f}, by {differ:.1f} of {docs} {unit} (more than "
            f"{slack_docs:g}); the serving graph does not compute what was validated")


def check_validation_accuracy(cfg, corpus, module, classifier, *, trained_accuracy: float,
                              export_accuracy: float) -> dict:
    """``check_accuracy`` for an export, read the way training validated (``--val-windows``) even when it serves
    another window count; returns the figures for the model card.

    One document of slack for an fp32 model trained in fp32; a run trained with --mixed-precision was validated
    with bf16/fp16 rounding and a bf16 export serves with bf16 rounding, so those get 1 % of the documents more.
    """
    from trainer.export import ServingModule  # noqa: PLC0415
    from trainer.modelcard import multi_label_section, predict_module  # noqa: PLC0415

    multi = getattr(corpus, "multi_label", False)
    if cfg.val_windows != module.max_windows:
        names = [c.decode() for c in module.class_names.numpy()]
        same = ServingModule(module.preprocessor, classifier, names, precision=module.precision,
                             max_windows=cfg.val_windows, window_overlap=cfg.overlap_tokens,
                             thresholds=module.thresholds.numpy() if multi else None)
        if multi:
            export_accuracy = multi_label_section(same, corpus, cfg.batch_size)["export_val_micro_f1"]
        else:
            predicted = predict_module(same, corpus.val_texts, cfg.batch_size)
            export_accuracy = float(np.mean(predicted == np.asarray(corpus.val_labels)))
    docs = len(corpus.val_texts)
    if multi:  # micro-F1: one flipped yes/no moves it by at most 2 / (true labels); "documents" become decisions
        docs = max(sum(len(ids) for ids in corpus.val_labels), 1) // 2 or 1
    exact = cfg.mixed_precision == "off" and module.precision == "fp32"
    slack = 1.0 if exact else 1.0 + 0.01 * docs
    check_accuracy(export_accuracy, trained_accuracy, docs, slack_docs=slack,
                   **({"metric": "micro-F1", "unit": "label decisions (true labels / 2)"} if multi else {}))
    return {"val_windows": cfg.val_windows, "export_val_accuracy": export_accuracy,
            "trained_val_accuracy": trained_accuracy, "slack_docs": slack}
