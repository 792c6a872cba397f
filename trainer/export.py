"""Versioned, atomic SavedModel export: raw strings in, probabilities / class id / label out.

The exported module holds the same `Preprocessor` object the tf.data pipeline used, so serving tokenizes
exactly like training did. A version appears under the base path only by `os.rename` of a fully written
folder, so a model server polling the base path never loads half a model.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import tensorflow as tf

from trainer.model import INPUT_NAMES

log = logging.getLogger("bertbc.trainer")

SIGNATURE = "serving_default"
INPUT = "text"


class ServingModule(tf.Module):
    """What the model server loads: preprocessing + classifier + class names in one graph.

    Attributes kept on the SavedModel (besides the signature) so benchmarks and tests can call the parts:
      preprocessor(text [B] string) -> dict of int32 [B, S]
      classify_features(input_word_ids, input_mask, input_type_ids) -> float32 logits [B, C]
    """

    def __init__(self, preprocessor, classifier, class_names: list[str]):
        super().__init__(name="bertbc")
        self.preprocessor = preprocessor
        self.classifier = classifier
        self.class_names = tf.Variable(class_names, dtype=tf.string, trainable=False, name="class_names")
        seq = getattr(preprocessor, "seq_length", None)
        spec = tf.TensorSpec([None, seq], tf.int32)
        self.classify_features = tf.function(self._classify_features,
                                             input_signature=[spec, spec, spec])
        self.serve = tf.function(self._serve, input_signature=[tf.TensorSpec([None], tf.string, name=INPUT)])

    def _classify_features(self, input_word_ids, input_mask, input_type_ids):
        features = dict(zip(INPUT_NAMES, (input_word_ids, input_mask, input_type_ids), strict=True))
        return tf.cast(self.classifier(features, training=False), tf.float32)

    def _serve(self, text):
        features = self.preprocessor(text)
        logits = self._classify_features(*(features[name] for name in INPUT_NAMES))
        probabilities = tf.nn.softmax(logits, axis=-1)
        class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        return {"probabilities": probabilities, "class_id": class_id,
                "label": tf.gather(self.class_names, class_id)}


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


def export_saved_model(module: ServingModule, base_path: str | Path, *, write_extras=None) -> tuple[int, Path]:
    """Saves `module` with its `serving_default` signature as the next version under `base_path`.

    Args:
      module: the ServingModule to save.
      base_path: the model's base path (e.g. `models/bertbc`), created if missing.
      write_extras: optional `f(tmp_version_dir)` run after saving and before publishing, for warm-up
        requests, the model card and checks; if it raises, nothing is published and the temp folder is removed.

    Returns:
      (version number, final version path).
    """
    base = Path(base_path)
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".tmp-export-{os.getpid()}-{next_version(base)}"  # not numeric: servers ignore it
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tf.saved_model.save(module, str(tmp), signatures={SIGNATURE: module.serve})
        if write_extras is not None:
            write_extras(tmp)
        _fsync_tree(tmp)
        version, target = publish(tmp, base)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported version %d to %s", version, target)
    return version, target


def _fsync_tree(root: Path) -> None:
    """Flushes every file so a crash right after the rename cannot leave a published but empty version."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
