"""Versioned, atomic SavedModel export: raw strings in, probabilities / class id / label out (and, for a
multi-label model, `labels`: the names above their tuned thresholds).

The exported module holds the same `Preprocessor` object the tf.data pipeline used, so serving tokenizes
exactly like training did. A version appears under the base path only by `os.rename` of a fully written
folder, so a model server polling the base path never loads half a model.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import tensorflow as tf

from trainer.checkpoints import fsync_dir
from trainer.model import HEAD_NAME, INPUT_NAMES, with_any_length
from trainer.serving_encoder import ServingEncoder, encoder_config
from trainer.windows import mean_over_windows

log = logging.getLogger("bertbc.trainer")

SIGNATURE = "serving_default"
INPUT = "text"
PRECISIONS = ("fp32", "bf16")  # --export-precision


class ServingModule(tf.Module):
    """What the model server loads: preprocessing + classifier + class names in one graph.

    ``serve`` packs each request (after TF Serving's batching: each merged batch) only to the bucket length
    its longest text needs (``Preprocessor.bucketed``: 32, 64, 128, … up to the trained length), so short
    texts cost less; the signature and the raw-text contract do not change.

    Attributes kept on the SavedModel (besides the signature) so benchmarks and tests can call the parts:
      preprocessor(text [B] string) -> dict of int32 [B, S] (the trained, full length S)
      preprocessor.bucketed(text [B] string) -> dict of int32 [B, L] (what ``serve`` feeds the classifier)
      classify_features(input_word_ids, input_mask, input_type_ids), each int32 [B, any L]
        -> float32 logits [B, C]
      serve_full_length(text [B] string) -> what ``serve`` returns, with every window packed to the full
        trained length (no buckets): the reference ``make bench-parity`` compares the buckets with

    Args:
      preprocessor: a ``trainer.preprocessing.Preprocessor``.
      classifier: the trained model from ``trainer.model.build_classifier``.
      class_names: label strings, index = class id.
      precision: "fp32" or "bf16" numerics of the encoder's matmuls. An encoder built by
        ``trainer.bert_convert`` is rebuilt for serving in either precision (``trainer.serving_encoder``: fused
        ops, same math); any other encoder (TF Hub) is served through the Keras model as trained, fp32 only.
      max_windows: 1 classifies the head of each text (as trained); more reads the whole text in up to this
        many windows overlapping by ``window_overlap`` word pieces and averages their logits.
      thresholds: a multi-label model's per-label decision thresholds (``trainer.multilabel``); then
        ``probabilities`` are per-label sigmoids and ``labels`` (string [B, C]) lists the names whose
        probability reaches their threshold, most probable first, padded with "" (a text may get none);
        ``label``/``class_id`` stay the most probable label. None: single-label (softmax).
    """

    def __init__(self, preprocessor, classifier, class_names: list[str], precision: str = "fp32",
                 max_windows: int = 1, window_overlap: int = 0, thresholds=None):
        super().__init__(name="bertbc")
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r} must be one of {PRECISIONS}")
        if max_windows < 1:
            raise ValueError(f"max_windows={max_windows} must be >= 1")
        self.precision = precision
        self.max_windows, self.window_overlap = max_windows, window_overlap
        self.preprocessor = preprocessor
        encoder = classifier.get_layer("encoder")
        try:
            config = encoder_config(encoder._handle)
        except ValueError:
            if precision != "fp32":
                raise
            self.encoder = None  # a TF Hub encoder: the Keras model as trained
            self.classifier = with_any_length(classifier)
        else:
            dtype = tf.float32 if precision == "fp32" else tf.bfloat16
            self.encoder = ServingEncoder(config, encoder.variables, dtype)
            names = {layer.name for layer in classifier.layers}
            self.pooling = classifier.get_layer("mean_pooling") if "mean_pooling" in names else None
            self.head = classifier.get_layer(HEAD_NAME)
        self.class_names = tf.Variable(class_names, dtype=tf.string, trainable=False, name="class_names")
        self.multi_label = thresholds is not None
        if self.multi_label:
            if len(thresholds) != len(class_names):
                raise ValueError(f"{len(thresholds)} thresholds for {len(class_names)} classes")
            self.thresholds = tf.Variable([float(t) for t in thresholds], dtype=tf.float32, trainable=False,
                                          name="thresholds")
        spec = tf.TensorSpec([None, None], tf.int32)
        self.classify_features = tf.function(self._classify_features,
                                             input_signature=[spec, spec, spec])
        text_spec = [tf.TensorSpec([None], tf.string, name=INPUT)]
        self.serve = tf.function(self._serve, input_signature=text_spec)
        self.serve_full_length = tf.function(self._serve_full_length, input_signature=text_spec)

    def _classify_features(self, input_word_ids, input_mask, input_type_ids):
        if self.encoder is None:
            features = dict(zip(INPUT_NAMES, (input_word_ids, input_mask, input_type_ids), strict=True))
            return tf.cast(self.classifier(features, training=False), tf.float32)
        if self.pooling is None:
            _, pooled = self.encoder.forward(input_word_ids, input_mask, input_type_ids, pooled=True)
        else:
            sequence = self.encoder.forward(input_word_ids, input_mask, input_type_ids)
            pooled = self.pooling(sequence, input_mask)
        return tf.cast(self.head(pooled), tf.float32)

    def _serve(self, text):
        return self._answer(text, bucket=True)

    def _serve_full_length(self, text):
        return self._answer(text, bucket=False)

    def _answer(self, text, *, bucket: bool):
        features, doc_index = serving_features(self.preprocessor, text, max_windows=self.max_windows,
                                               overlap=self.window_overlap, bucket=bucket)
        logits = self._classify_features(*(features[name] for name in INPUT_NAMES))
        if doc_index is not None:  # the whole article in windows, logits averaged per document (trainer/windows.py)
            logits = mean_over_windows(logits, doc_index, tf.shape(text)[0])
        if self.multi_label:
            return self._multi_label_answer(tf.sigmoid(logits))
        probabilities = tf.nn.softmax(logits, axis=-1)
        class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        return {"probabilities": probabilities, "class_id": class_id,
                "label": tf.gather(self.class_names, class_id)}

    def _multi_label_answer(self, probabilities):
        above = probabilities >= self.thresholds
        # Labels above their thresholds first (most probable first), then the rest, which become "".
        order = tf.argsort(probabilities + 2.0 * tf.cast(above, tf.float32), axis=-1, direction="DESCENDING",
                           stable=True)
        labels = tf.where(tf.gather(above, order, batch_dims=1), tf.gather(self.class_names, order), "")
        class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        return {"probabilities": probabilities, "class_id": class_id,
                "label": tf.gather(self.class_names, class_id), "labels": labels}


def serving_features(preprocessor, text, *, max_windows: int, overlap: int, bucket: bool):
    """What ``serve`` feeds the classifier: (dict of int32 [W, L], doc_index int32 [W] or None for one per text).

    One window per text is the ``Preprocessor`` call (its truncation: head or head+tail, as trained); more read
    the whole text (``Preprocessor.windowed``). Validation packs with ``Preprocessor.windowed(bucket=False)``,
    which gives the same windows (tests/test_preprocessing.py checks every truncation x window count).
    """
    if max_windows == 1:
        return (preprocessor.bucketed(text) if bucket else preprocessor(text)), None
    return preprocessor.windowed(text, max_windows=max_windows, overlap=overlap, bucket=bucket)


def check_rebuild(module: ServingModule, classifier, features: dict[str, tf.Tensor], tolerance: float = 1e-4) -> float:
    """Largest logit difference between the served graph and the trained Keras model on `features`, relative to
    the largest logit (at least 1).

    Raises ValueError above `tolerance` for an fp32 export (it must be the trained math up to float rounding);
    a bf16 export is only reported (its differences are bf16 rounding, measured by `make bench-parity`).
    """
    want = tf.cast(classifier(features, training=False), tf.float32)
    got = module.classify_features(*(features[name] for name in INPUT_NAMES))
    diff = float(tf.reduce_max(tf.abs(got - want)) / tf.maximum(tf.reduce_max(tf.abs(want)), 1.0))
    if module.precision == "fp32" and diff > tolerance:
        raise ValueError(f"the serving graph's logits differ from the trained model's by {diff:.2e} (relative, "
                         f"> {tolerance}); trainer/serving_encoder.py no longer matches the encoder it rebuilds")
    return diff


def parse_version(name: str) -> int | None:
    """TF Serving's rule: a child whose whole name is a non-negative integer is a version (`0002` is 2)."""
    return int(name) if name.isascii() and name.isdigit() else None


def next_version(base_path: str | Path) -> int:
    """1 + the highest numeric version folder under `base_path` (temp and other folders ignored)."""
    base = Path(base_path)
    versions = [v for v in (parse_version(p.name) for p in base.iterdir() if p.is_dir()) if v is not None] \
        if base.exists() else []
    return max(versions, default=0) + 1


def publish(tmp_dir: Path, base_path: Path, attempts: int = 100) -> tuple[int, Path]:
    """Renames a fully written `tmp_dir` to the next free version folder; retries if another export won."""
    for _ in range(attempts):
        version = next_version(base_path)
        target = base_path / str(version)
        try:
            os.rename(tmp_dir, target)  # atomic on one filesystem; fails if target exists and is non-empty
        except OSError:
            if target.exists():
                continue
            raise
        return version, target
    raise RuntimeError(f"could not find a free version under {base_path} after {attempts} attempts")


TMP_PREFIX = ".tmp-export-"  # not numeric: model servers ignore such folders
_LOCK = ".export.lock"
_UNLOCKED_STALE_SECONDS = 600


def export_saved_model(module: ServingModule, base_path: str | Path, *, write_extras=None,
                       before_publish=None) -> tuple[int, Path]:
    """Saves `module` with its `serving_default` signature as the next version under `base_path`.

    The version is written into a hidden temporary folder, flushed, then renamed into place and the rename
    made durable, so a model server polling the base path never sees half a model and a power cut cannot
    un-publish it. The writer holds an flock on a file inside the temporary folder while it works, which lets
    `clean_stale_exports` tell a live export from one whose process was killed.

    Args:
      module: the ServingModule to save.
      base_path: the model's base path (e.g. `models/bertbc`), created if missing.
      write_extras: optional `f(tmp_version_dir)` run after saving and before publishing, for warm-up
        requests, the model card and checks; if it raises, nothing is published and the temp folder is removed.
      before_publish: optional `f(tmp_version_dir)` run last, on the complete folder, right before the rename
        (the evaluation gate and load check, trainer/gate.py); if it raises, nothing is published (it may have
        moved the folder elsewhere first, e.g. to models/rejected/).

    Returns:
      (version number, final version path).
    """
    base = Path(base_path)
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=base))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the server (another uid) must read the version
    try:
        with open(tmp / _LOCK, "w") as lock:  # held until the rename
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            tf.saved_model.save(module, str(tmp), signatures={SIGNATURE: module.serve})
            if write_extras is not None:
                write_extras(tmp)
            if before_publish is not None:
                before_publish(tmp)
            os.unlink(tmp / _LOCK)  # not part of the version; the open descriptor keeps the lock
            _fsync_tree(tmp)
            version, target = publish(tmp, base)
            fsync_dir(base)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported version %d to %s", version, target)
    return version, target


def clean_stale_exports(base_path: str | Path) -> list[Path]:
    """Removes temporary export folders left by killed exporters; returns what it removed.

    A folder is stale if its lock file can be locked (its writer is gone: flock dies with the process), or if
    it has no lock file and has not changed for 10 minutes (a writer killed between unlinking the lock and the
    rename; a live writer finishes that step in seconds).
    """
    base = Path(base_path)
    removed = []
    for tmp in sorted(base.glob(f"{TMP_PREFIX}*")) if base.is_dir() else []:
        lock_path = tmp / _LOCK
        try:
            if lock_path.exists():
                with open(lock_path) as lock:
                    try:
                        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # a live export
            elif time.time() - tmp.stat().st_mtime < _UNLOCKED_STALE_SECONDS:
                continue
        except FileNotFoundError:
            continue  # published or removed meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("removed %s, left by an interrupted export", tmp)
        removed.append(tmp)
    return removed


def _fsync_tree(root: Path) -> None:
    """Flushes every file, then every folder (deepest first, `root` last), so a crash right after the rename
    cannot leave a published version with empty files or missing entries (POSIX: a new file's name is durable
    only once its directory is synced; `variables/` and `assets/` are such directories)."""
    paths = sorted(root.rglob("*"))
    for path in paths:
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    for path in sorted((p for p in paths if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        fsync_dir(path)
    fsync_dir(root)
