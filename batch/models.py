"""Which exported version to score with, and its class names, read without loading the graph.

A base path (``models/bertbc``) resolves to its newest version the way TF Serving picks one: numeric
folders only, and only those holding a ``saved_model.pb`` (an export still being written sits in a hidden
``.tmp-export-*`` folder and is renamed into place when complete). Paths go through Beam's ``FileSystems``,
so a ``gs://`` base path resolves the same way as a local one.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath

from apache_beam.io.filesystems import FileSystems

SAVED_MODEL = "saved_model.pb"
MODEL_CARD = "model_card.json"
CLASS_NAMES_KEY = "class_names/.ATTRIBUTES/VARIABLE_VALUE"
THRESHOLDS_KEY = "thresholds/.ATTRIBUTES/VARIABLE_VALUE"  # only a multi-label export has per-label thresholds


class ModelError(ValueError):
    """A model path that cannot be scored with; the message is one line naming the path."""


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """One exported version.

    Attributes:
      path: the version folder (``models/bertbc/3``).
      version: its number (3).
      class_names: label strings, index = ``class_id``; the probability columns are named after them.
      multi_label: the export answers a label set per text (its ``labels`` output), written as ``labels``.
    """

    path: str
    version: int
    class_names: tuple[str, ...]
    multi_label: bool = False


def _version(name: str) -> int | None:
    return int(name) if name.isascii() and name.isdigit() else None


def _exists(path: str) -> bool:
    return FileSystems.exists(path)


def resolve_model(path: str) -> ModelRef:
    """A version folder as given, or the newest complete numeric version under a base path.

    Raises:
      ModelError: no ``saved_model.pb`` at the path nor in any numeric sub-folder, or no class names.
    """
    path = path.rstrip("/") or "/"
    version = _version(posixpath.basename(path))
    if version is not None and _exists(FileSystems.join(path, SAVED_MODEL)):
        return ModelRef(path, version, *read_model_info(path))
    if _exists(FileSystems.join(path, SAVED_MODEL)):
        raise ModelError(f"{path} holds a SavedModel but is not a numeric version folder; pass its base path "
                         "(models/bertbc) or a version folder (models/bertbc/3)")
    try:
        matches = FileSystems.match([FileSystems.join(path, "*", SAVED_MODEL)])[0].metadata_list
    except Exception:  # noqa: BLE001 (Beam raises BeamIOError for a missing folder)
        matches = []
    versions = {}
    for match in matches:
        folder = posixpath.dirname(match.path)
        number = _version(posixpath.basename(folder))
        if number is not None:
            versions[number] = folder
    if not versions:
        raise ModelError(f"{path}: no exported version (a numeric folder with {SAVED_MODEL}); "
                         "train one with `make train` or pass --model models/bertbc/N")
    newest = max(versions)
    return ModelRef(versions[newest], newest, *read_model_info(versions[newest]))


def read_model_info(version_path: str) -> tuple[tuple[str, ...], bool]:
    """(class names, multi-label) from the model card, else from the SavedModel's ``class_names`` variable and
    whether it holds per-label ``thresholds`` (only a multi-label export does)."""
    card = FileSystems.join(version_path, MODEL_CARD)
    if _exists(card):
        with FileSystems.open(card) as f:
            meta = json.loads(f.read().decode("utf-8"))
        names = meta.get("data", {}).get("class_names")
        if names:
            return tuple(str(n) for n in names), bool(meta.get("multi_label", False))
    import tensorflow as tf  # noqa: PLC0415 (only when there is no model card: TF is slow to import)

    try:
        reader = tf.train.load_checkpoint(FileSystems.join(version_path, "variables", "variables"))
        values = reader.get_tensor(CLASS_NAMES_KEY)
    except Exception as e:  # noqa: BLE001 (TF raises several types for a missing checkpoint/key)
        raise ModelError(f"{version_path}: no {MODEL_CARD} with data.class_names and no class_names variable "
                         f"in the SavedModel ({type(e).__name__})") from e
    return tuple(v.decode("utf-8") for v in values.tolist()), reader.has_tensor(THRESHOLDS_KEY)
