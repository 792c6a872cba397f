"""Corpus discovery, download and the seed notebook's train/validation split.

Accepted layout (the official ``bbc-fulltext.zip``)::

    DIR/                      <- pass this ...
      README.TXT              (top-level files are ignored, logged at INFO)
      business/001.txt ...    (one folder per class; its name is the label)
      entertainment/...
    PARENT/bbc/...            <- ... or its parent, if ``bbc/`` is the parent's only visible sub-folder

Rules (they follow ``tf_keras.utils.text_dataset_from_directory``, whose split we reproduce):

* class folders are the visible sub-folders of DIR, sorted by name; their sorted order gives the label ids;
  folders whose name starts with ``.`` are ignored;
* documents are files whose name ends in ``.txt`` in any letter case (``001.TXT`` counts), found
  recursively (files in nested sub-folders of a class folder belong to that class);
* every other file in a class folder (``.DS_Store``, ``notes.md``) is ignored and logged as a WARNING;
* errors (``DataError``): the path does not exist or is not a folder, no class folders, fewer than 2
  classes, a class folder without documents (named in the message), too few documents for a non-empty
  validation split.

Texts are kept as raw bytes: the in-graph preprocessing repairs invalid UTF-8 (one BBC file,
``sport/199.txt``, holds a Latin-1 pound sign), so such documents are kept, counted, and logged.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import logging
import math
import os
import pathlib
import re
import shutil
import stat
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

BBC_URL = "http://mlg.ucd.ie/files/datasets/bbc-fulltext.zip"
BBC_CLASS_COUNTS = {"business": 510, "entertainment": 386, "politics": 417, "sport": 511, "tech": 401}
BBC_FOLDER = "bbc"

# The official zip is ~2.8 MB packed / ~5 MB unpacked; anything far larger is not the BBC corpus.
_MAX_UNPACKED_BYTES = 200 * 1024 * 1024
_DOWNLOAD_TIMEOUT_S = 60
_SPLITS = {"train": "train", "training": "train", "val": "val", "validation": "val"}


class DataError(Exception):
    """Every user-facing data problem; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class Corpus:
    """The seeded train/validation split of a class-folder corpus.

    Texts are raw file bytes (no decoding); labels are int indices into ``class_names`` (sorted folder
    names); paths are absolute file paths as strings, aligned with texts and labels.
    ``invalid_utf8_paths`` lists the held documents whose bytes are not valid UTF-8 (they are kept).
    ``fingerprint`` is a sha256 hex digest over the sorted (relative path, label, sha256 of bytes) of
    every document held (train and validation), so a model card can record exactly which data it saw.
    """

    class_names: tuple[str, ...]
    train_texts: tuple[bytes, ...]
    train_labels: tuple[int, ...]
    train_paths: tuple[str, ...]
    val_texts: tuple[bytes, ...]
    val_labels: tuple[int, ...]
    val_paths: tuple[str, ...]
    invalid_utf8_paths: tuple[str, ...]
    fingerprint: str
    # A held-out test set (own corpora with --test-split / --test-data; BBC's default split has none).
    test_texts: tuple[bytes, ...] = ()
    test_labels: tuple[int, ...] = ()
    test_paths: tuple[str, ...] = ()
    # --multi-label: each entry of *_labels is then a tuple of class ids (possibly empty), not one id.
    multi_label: bool = False
    # A corpus too large to hold: the training texts are not in `train_texts` (empty) but read again from the files
    # each time this iterable is iterated, as (text bytes, label) pairs in `train_labels` order.
    train_stream: Iterable[tuple[bytes, object]] | None = None
    # Per validation document: whether an exact copy is in the training split, when computed while streaming.
    val_leak: tuple[bool, ...] | None = None

    @property
    def num_train(self) -> int:
        """Training documents, held or streamed."""
        return len(self.train_labels)

    def iter_train_texts(self) -> Iterator[bytes]:
        """The training texts in order, from memory or from the stream."""
        if self.train_stream is None:
            return iter(self.train_texts)
        return (text for text, _ in self.train_stream)

    def class_counts(self, split: str) -> dict[str, int]:
        """Documents per class name in one split.

        Args:
          split: ``"train"``/``"training"`` or ``"val"``/``"validation"``.

        Returns:
          ``{class_name: count}`` in ``class_names`` order, zeros included (multi-label: rows with the label).
        """
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
        labels = self.train_labels if _SPLITS[split] == "train" else self.val_labels
        counts = collections.Counter(i for ids in labels for i in ids) if self.multi_label \
            else collections.Counter(labels)
        return {name: counts.get(i, 0) for i, name in enumerate(self.class_names)}

    def val_in_train(self) -> tuple[bool, ...]:
        """Per validation document: whether a byte-identical copy is in the training split (leakage).

        BBC has 28 such documents in the seed split; accuracy without them is the honest number.
        """
        if self.val_leak is not None:
            return self.val_leak
        train = set(self.train_texts)
        return tuple(text in train for text in self.val_texts)


# --------------------------------------------------------------------------------------------- layout


def _visible_subdirs(path: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_document(name: str) -> bool:
    # Same test as tf_keras' dataset_utils.iter_valid_files: the extension check is case-insensitive.
    return name.lower().endswith(".txt")


def _class_root(path: pathlib.Path) -> pathlib.Path:
    """The folder holding the class folders: ``path`` itself, or ``path/bbc`` if that is its only sub-folder."""
    if not path.exists():
        raise DataError(f"data dir {str(path)!r} does not exist. {_how_to_provide()}")
    if not path.is_dir():
        raise DataError(f"data dir {str(path)!r} is a file, not a folder. {_how_to_provide()}")
    subdirs = _visible_subdirs(path)
    if len(subdirs) == 1 and subdirs[0].name == BBC_FOLDER and _visible_subdirs(subdirs[0]):
        return subdirs[0].resolve()
    return path.resolve()


def _scan(root: pathlib.Path) -> dict[str, int]:
    """Validates the layout under ``root`` and returns ``{class_name: document count}`` (sorted names)."""
    subdirs = _visible_subdirs(root)
    top_files = sorted(p.name for p in root.iterdir() if not p.is_dir())
    hidden = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("."))
    if top_files:
        logger.info("ignoring %d top-level file(s) in %s: %s", len(top_files), root, ", ".join(top_files[:10]))
    if hidden:
        logger.info("ignoring hidden folder(s) in %s: %s", root, ", ".join(hidden))
    if not subdirs:
        raise DataError(f"no class folders in {str(root)!r}. {_how_to_provide()}")
    if len(subdirs) < 2:
        raise DataError(
            f"only one class folder ({subdirs[0].name!r}) in {str(root)!r}; a classifier needs at least 2. "
            f"{_how_to_provide()}"
        )
    counts: dict[str, int] = {}
    empty = []
    for sub in subdirs:
        n_docs = 0
        stray = []
        for dirpath, _, files in os.walk(sub):
            for name in files:
                if _is_document(name):
                    n_docs += 1
                else:
                    stray.append(os.path.relpath(os.path.join(dirpath, name), root))
        if stray:
            logger.warning(
                "ignoring %d non-.txt file(s) in class folder %r: %s",
                len(stray), sub.name, ", ".join(sorted(stray)[:10]),
            )
        counts[sub.name] = n_docs
        if n_docs == 0:
            empty.append(sub.name)
    if empty:
        raise DataError(
            f"class folder(s) {empty} in {str(root)!r} hold no .txt documents; remove them or add documents. "
            f"{_how_to_provide()}"
        )
    return counts


def _how_to_provide(cache_dir: str | os.PathLike | None = None, url: str = BBC_URL) -> str:
    from trainer.config import default_cache_dir  # the real folder, never a literal placeholder

    where = f"{os.path.join(os.fspath(cache_dir if cache_dir is not None else default_cache_dir()), 'data')}/"
    return (
        "Provide the corpus with --data-dir DIR, where DIR holds one folder per class with .txt files "
        "(DIR/business/001.txt, ...; the layout of the official bbc-fulltext.zip, whose bbc/ folder or its "
        f"parent can be passed), or download {url} and unzip it so that {where}{BBC_FOLDER}/<class>/*.txt exists."
    )


# ------------------------------------------------------------------------------------------- download


def resolve_data_dir(data_dir: str | os.PathLike | None, cache_dir: str | os.PathLike, url: str = BBC_URL) -> pathlib.Path:
    """Finds the corpus folder, downloading the BBC zip into the cache when none is given.

    With ``data_dir`` given, returns the folder holding its class folders (``data_dir`` or ``data_dir/bbc``)
    without touching the network. Otherwise uses ``<cache_dir>/data/bbc`` if present, else downloads ``url``
    into ``<cache_dir>/data/``, extracts it safely into a temp folder (members with absolute paths, ``..``,
    or symlinks are rejected; CRC-32 of every member is checked), checks the per-class file counts against
    ``BBC_CLASS_COUNTS``, and only then renames it into place, so an interrupted run never leaves a
    half-corpus that a later run would trust. The zip's own checksum cannot be verified: no checksum is
    published with it, so it cannot be learned offline; the counts and CRCs are what can be checked.

    Args:
      data_dir: a corpus folder (see the module docstring for the layout), or None to use the cache.
      cache_dir: the bertbc cache folder (``--cache-dir``).
      url: where to download the zip from (tests serve their own zip on 127.0.0.1).

    Returns:
      Absolute path of the folder holding the class folders.

    Raises:
      DataError: the folder is missing/invalid, or the download/extraction/check failed (nothing is left
        behind); the message says how to provide the data.
    """
    if data_dir is not None:
        root = _class_root(pathlib.Path(data_dir))
        logger.info("using corpus at %s", root)
        return root
    data_home = pathlib.Path(cache_dir) / "data"
    target = data_home / BBC_FOLDER
    if target.is_dir():
        logger.info("using cached corpus at %s", target)
        return target.resolve()
    return _download_bbc(url, data_home)


def _download_bbc(url: str, data_home: pathlib.Path) -> pathlib.Path:
    target = data_home / BBC_FOLDER
    try:
        data_home.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the cache folder {str(data_home)!r}: {e}") from e
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=".bbc-download-", dir=data_home))
    try:
        zip_path = tmp / "bbc-fulltext.zip"
        _fetch(url, zip_path, data_home.parent)
        extracted = tmp / "extracted"
        _safe_extract(zip_path, extracted)
        root = _class_root(extracted)
        counts = _scan(root)
        if counts != BBC_CLASS_COUNTS:
            raise DataError(
                f"the zip from {url} does not hold the BBC corpus: per-class .txt counts {counts}, "
                f"expected {BBC_CLASS_COUNTS}. {_how_to_provide(data_home.parent, url)}"
            )
        logger.info(
            "verified per-class file counts %s and member CRC-32s; the zip's own checksum cannot be "
            "verified offline (none is published)", counts,
        )
        try:
            os.rename(root, target)
        except OSError:
            if not target.is_dir():  # another process may have won the race; its copy passed the same checks
                raise
        logger.info("BBC corpus ready at %s", target)
        return target.resolve()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fetch(url: str, dest: pathlib.Path, cache_dir: pathlib.Path) -> None:
    from tqdm import tqdm

    logger.info("downloading %s to %s", url, dest.parent)
    try:
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp, open(dest, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(url) or "download") as bar:
                while chunk := resp.read(1 << 16):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DataError(
            f"could not download the BBC corpus from {url}: {e}. {_how_to_provide(cache_dir, url)}"
        ) from e


def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in pathlib.PurePosixPath(name).parts:
        return "'..' path component"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    return None


def _safe_extract(zip_path: pathlib.Path, dest: pathlib.Path) -> None:
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = zf.infolist()
            for info in infos:
                reason = _unsafe_reason(info)
                if reason:
                    raise DataError(f"refusing to extract {zip_path.name}: member {info.filename!r} is a {reason}")
            unpacked = sum(info.file_size for info in infos)
            if unpacked > _MAX_UNPACKED_BYTES:
                raise DataError(
                    f"refusing to extract {zip_path.name}: it would unpack to {unpacked} bytes "
                    f"(limit {_MAX_UNPACKED_BYTES}); this is not the BBC corpus"
                )
            bad = zf.testzip()
            if bad is not None:
                raise DataError(f"{zip_path.name} is corrupt: member {bad!r} fails its CRC-32 check")
            zf.extractall(dest)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as e:
        raise DataError(f"{zip_path.name} is not a valid zip file ({e}); download it again") from e


# ---------------------------------------------------------------------------------------------- split


def _seeded_split(
    root: pathlib.Path, validation_split: float, seed: int
) -> tuple[list[str], list[int], list[str], list[int], list[str]]:
    """The exact split of ``tf_keras.utils.text_dataset_from_directory(root, validation_split, seed)``.

    The public function returns a dataset without its file paths (neither tf_keras 2.21 nor Keras 3 sets
    ``.file_paths`` on text datasets), so we call the two helpers it runs: ``index_directory`` (sorted
    listing, then a NumPy ``RandomState(seed)`` shuffle) and ``get_training_or_validation_split`` (the last
    ``int(validation_split * n)`` files are validation). tests/test_data.py checks the result against the
    public function. Keras 3's ``tf.keras`` variant gives the identical split on BBC (checked by hand).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tf_keras.src.utils import dataset_utils

    with contextlib.redirect_stdout(io.StringIO()) as printed:  # "Found N files ..." prints: logged instead
        paths, labels, class_names = dataset_utils.index_directory(
            str(root), "inferred", formats=(".txt",), shuffle=True, seed=seed
        )
        train = dataset_utils.get_training_or_validation_split(paths, labels, validation_split, "training")
        val = dataset_utils.get_training_or_validation_split(paths, labels, validation_split, "validation")
    for line in printed.getvalue().splitlines():
        logger.debug("tf_keras: %s", line)
    return (
        [str(p) for p in train[0]], [int(x) for x in train[1]],
        [str(p) for p in val[0]], [int(x) for x in val[1]],
        list(class_names),
    )


def _check_limit(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be None or a positive int, got {value!r}")


def load_corpus(
    data_dir: str | os.PathLike,
    *,
    validation_split: float = 0.2,
    seed: int = 42,
    max_train_docs: int | None = None,
    max_val_docs: int | None = None,
) -> Corpus:
    """Loads a class-folder corpus with the seed notebook's split (1,780 train / 445 val on BBC).

    Args:
      data_dir: folder holding the class folders, or its parent with a single ``bbc/`` sub-folder.
      validation_split: share of documents for validation, in (0, 1).
      seed: seed of the split shuffle (42 reproduces the notebook).
      max_train_docs: keep only the first N training documents of the seeded split (smoke runs).
      max_val_docs: same for validation.

    Returns:
      A ``Corpus``; per-class counts are logged at INFO, invalid UTF-8 files at WARNING.

    Raises:
      DataError: bad layout (see the module docstring). ValueError: bad argument values.
    """
    if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float)) or not 0 < validation_split < 1:
        raise ValueError(f"validation_split must be a float in (0, 1), got {validation_split!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    _check_limit("max_train_docs", max_train_docs)
    _check_limit("max_val_docs", max_val_docs)

    root = _class_root(pathlib.Path(data_dir))
    counts = _scan(root)
    total = sum(counts.values())
    if int(validation_split * total) < 1 or int(validation_split * total) >= total:
        raise DataError(
            f"{total} documents in {str(root)!r} are too few for validation_split={validation_split}: "
            f"both splits must be non-empty (about {math.ceil(1 / validation_split)} documents are needed); "
            "point --data-dir at a larger corpus"
        )
    train_paths, train_labels, val_paths, val_labels, class_names = _seeded_split(root, validation_split, seed)
    if class_names != list(counts):  # both come from the same sorted listing; guard against drift
        raise DataError(f"class folders changed while reading {str(root)!r}: {class_names} vs {list(counts)}")
    train_paths, train_labels = train_paths[:max_train_docs], train_labels[:max_train_docs]
    val_paths, val_labels = val_paths[:max_val_docs], val_labels[:max_val_docs]

    train_texts, train_digests, train_bad = _read_all(train_paths)
    val_texts, val_digests, val_bad = _read_all(val_paths)
    invalid = tuple(train_bad + val_bad)
    if invalid:
        logger.warning(
            "%d document(s) are not valid UTF-8; kept as raw bytes (the in-graph preprocessing repairs them): %s",
            len(invalid), ", ".join(invalid),
        )
    fingerprint = _fingerprint(
        root, train_paths + val_paths, train_labels + val_labels, train_digests + val_digests
    )
    corpus = Corpus(
        class_names=tuple(class_names),
        train_texts=tuple(train_texts), train_labels=tuple(train_labels), train_paths=tuple(train_paths),
        val_texts=tuple(val_texts), val_labels=tuple(val_labels), val_paths=tuple(val_paths),
        invalid_utf8_paths=invalid,
        fingerprint=fingerprint,
    )
    logger.info(
        "corpus %s: %d classes, %d train / %d validation documents (seed=%d, validation_split=%s)",
        root, len(class_names), len(train_paths), len(val_paths), seed, validation_split,
    )
    logger.info("train per class: %s", corpus.class_counts("train"))
    logger.info("validation per class: %s", corpus.class_counts("validation"))
    if set(counts) == set(BBC_CLASS_COUNTS) and counts != BBC_CLASS_COUNTS:
        logger.warning("per-class file counts %s differ from the official BBC corpus %s", counts, BBC_CLASS_COUNTS)
    return corpus


def _read_all(paths: Sequence[str]) -> tuple[list[bytes], list[str], list[str]]:
    texts, digests, invalid = [], [], []
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        texts.append(data)
        digests.append(hashlib.sha256(data).hexdigest())
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            invalid.append(path)
    return texts, digests, invalid


def _fingerprint(
    root: pathlib.Path, paths: Sequence[str], labels: Sequence[int], digests: Sequence[str]
) -> str:
    rows = sorted(
        (pathlib.Path(p).relative_to(root).as_posix(), label, digest)
        for p, label, digest in zip(paths, labels, digests, strict=True)
    )
    h = hashlib.sha256()
    for rel, label, digest in rows:
        h.update(f"{rel}\t{label}\t{digest}\n".encode())
    return h.hexdigest()

