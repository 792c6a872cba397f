"""Deterministic train/validation/test assignment, decided per row.

Three rules, chosen by ``make_splitter`` / ``iter_split``:

* **class folders, no test option**: the seed notebook's split, exactly
  (``tf_keras.utils.text_dataset_from_directory(validation_split=0.2, seed=42)``): the documents in
  ``index_directory`` order are shuffled with ``numpy.random.RandomState(seed)`` and the last
  ``int(validation_split * n)`` are validation. Reproduced here without TensorFlow (same files, same order;
  tests/test_corpus_split.py checks it against ``trainer.data.load_corpus`` on BBC).
* **files, no test share**: ``HashSplit``: a row's split comes from a 64-bit keyed BLAKE2b hash of its
  text and the seed, read as a fraction u in [0, 1): u < test -> test, u < test + validation ->
  validation, else train. No pass over the data is needed, the same text always lands in the same split
  (exact duplicates can never leak across splits), and the shares are right in expectation.
* **a test share** (``--test-split``): ``StratifiedSplit``: one streaming pass collects each row's hash
  and label ids; single-label: per class the smallest hashes go to test, then validation, in exact
  per-class quotas (every class with 2+ rows appears in test); multi-label: iterative stratification
  (``corpus.stratify``). Rows not seen in that pass fall back to the hash rule.

Explicit ``validation_data`` / ``test_data`` files replace the corresponding share.
"""

from __future__ import annotations

import array
import dataclasses
import functools
import hashlib
import os
import pathlib
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from corpus.folder_reader import read_document
from corpus.paths import class_root, folder_documents
from corpus.readers import iter_rows
from corpus.rows import BadRow, CorpusError, Row
from corpus.stratify import SPLITS, desired_per_label, iterative_stratification

DROPPED = "dropped"
_SCALE = float(1 << 64)
_NO_LIMIT = 1 << 64  # above every 64-bit key


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """Shares and seed of the split.

    Attributes:
      validation_split: share of rows for validation, in [0, 1).
      test_split: share of rows held out for the final test, in [0, 1).
      seed: seeds the hash and the stratification (42 reproduces the seed notebook on class folders).
    """

    validation_split: float = 0.2
    test_split: float = 0.0
    seed: int = 42

    def __post_init__(self):
        for name in ("validation_split", "test_split"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise CorpusError(f"{name} must be a fraction in [0, 1), got {v!r}")
        if self.validation_split + self.test_split >= 1:
            raise CorpusError(
                f"validation_split + test_split must be below 1 (nothing left to train on), got "
                f"{self.validation_split} + {self.test_split}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise CorpusError(f"seed must be an int, got {self.seed!r}")

    @property
    def fractions(self) -> tuple[float, float, float]:
        return (1 - self.validation_split - self.test_split, self.validation_split, self.test_split)


@functools.lru_cache(maxsize=8)
def _hasher(seed: int):
    return hashlib.blake2b(digest_size=8, key=str(seed).encode())


def row_key(text: str, seed: int) -> int:
    """64-bit keyed BLAKE2b of the UTF-8 text: stable across runs, machines and Python versions."""
    h = _hasher(seed).copy()
    h.update(text.encode("utf-8", "surrogatepass"))
    return int.from_bytes(h.digest(), "big")


class HashSplit:
    """Per-row split from the text's hash alone (see the module docstring)."""

    def __init__(self, spec: SplitSpec):
        self.spec = spec
        self._test = spec.test_split
        self._val = spec.test_split + spec.validation_split

    def assign_key(self, key: int) -> str:
        u = key / _SCALE
        return "test" if u < self._test else "validation" if u < self._val else "train"

    def assign(self, text: str) -> str:
        """``"train"``, ``"validation"`` or ``"test"`` for a row with this text."""
        return self.assign_key(row_key(text, self.spec.seed))

    def assign_row(self, row: Row) -> str:
        """The split of one row (its text decides; a stratified plan also reads its labels)."""
        return self.assign(row.text)


class StratifiedSplit(HashSplit):
    """Split planned over one pass of (text hash, labels), so every class keeps its share in every split.

    Single-label rows: per class, the distinct texts with the smallest hashes go to test, the next ones to
    validation (quotas from ``corpus.stratify.desired_per_label``), so a row is assigned from two
    thresholds of its class: O(classes) memory after planning. Multi-label rows: iterative stratification
    over the distinct texts, assigned by looking the hash up (16 bytes per distinct text). Rows the plan
    has not seen (another file, an unknown label) fall back to the hash rule.
    """

    def __init__(self, spec: SplitSpec, thresholds: dict[str, tuple[int, int]] | None = None,
                 keys: np.ndarray | None = None, codes: np.ndarray | None = None):
        super().__init__(spec)
        self.thresholds, self.keys, self.codes = thresholds, keys, codes

    @classmethod
    def fit(cls, rows: Iterable[Row | BadRow], spec: SplitSpec) -> StratifiedSplit:
        """Plans the split from a stream of rows (``BadRow``s are skipped: they are dropped anyway)."""
        keys, indptr, indices = array.array("Q"), array.array("q", [0]), array.array("i")
        label_ids: dict[str, int] = {}
        for row in rows:
            if isinstance(row, BadRow):
                continue
            keys.append(row_key(row.text, spec.seed))
            for label in dict.fromkeys(row.labels):
                indices.append(label_ids.setdefault(label, len(label_ids)))
            indptr.append(len(indices))
        if not keys:
            raise CorpusError("no usable rows to split")
        key_arr = np.frombuffer(keys, dtype=np.uint64)
        ptr, idx = np.frombuffer(indptr, dtype=np.int64), np.frombuffer(indices, dtype=np.int32).astype(np.int64)
        names = list(label_ids)
        if np.all(np.diff(ptr) <= 1):
            return cls(spec, thresholds=_class_thresholds(key_arr, ptr, idx, names, spec))
        unique, inverse = np.unique(key_arr, return_inverse=True)
        owner = inverse[np.repeat(np.arange(key_arr.size), np.diff(ptr))]
        pairs = np.unique(owner * len(names) + idx)  # one (text, label) pair once, duplicates' labels united
        pair_owner, pair_label = pairs // len(names), pairs % len(names)
        u_ptr = np.searchsorted(pair_owner, np.arange(unique.size + 1))
        codes = iterative_stratification(u_ptr, pair_label, len(names), spec.fractions, spec.seed)
        return cls(spec, keys=unique, codes=codes)

    def assign_row(self, row: Row) -> str:
        key = row_key(row.text, self.spec.seed)
        if self.thresholds is not None:
            if len(row.labels) == 1 and row.labels[0] in self.thresholds:
                test, val = self.thresholds[row.labels[0]]
                return "test" if key < test else "validation" if key < val else "train"
        elif self.keys is not None:
            i = int(np.searchsorted(self.keys, np.uint64(key)))
            if i < self.keys.size and int(self.keys[i]) == key:
                return SPLITS[self.codes[i]]
        return self.assign_key(key)


def _class_thresholds(keys: np.ndarray, ptr: np.ndarray, idx: np.ndarray, names: list[str],
                      spec: SplitSpec) -> dict[str, tuple[int, int]]:
    """Per class: (hash below which a row is test, hash below which it is validation)."""
    labelled = np.diff(ptr) == 1
    row_keys, row_labels = keys[labelled], idx
    out = {}
    for lab, name in enumerate(names):
        k = np.unique(row_keys[row_labels == lab])  # distinct texts, sorted by hash
        want = desired_per_label(k.size, spec.fractions)
        n_test = int(want[2] + 0.5)
        n_val = int(want[1] + 0.5)
        bound = [int(k[n]) if n < k.size else _NO_LIMIT for n in (n_test, n_test + n_val)]
        out[name] = (bound[0], bound[1])
    return out


def notebook_split(
    root: str | os.PathLike, validation_split: float = 0.2, seed: int = 42
) -> dict[str, list[tuple[str, str]]]:
    """The seed notebook's split of a class-folder corpus: ``{"train": [(path, class)], "validation": [...]}``.

    Same files, same order as ``trainer.data.load_corpus`` (``text_dataset_from_directory`` semantics).

    Raises:
      CorpusError: too few documents for two non-empty splits.
    """
    docs = folder_documents(pathlib.Path(root))
    paths = [p for p, _ in docs]
    labels = [c for _, c in docs]
    np.random.RandomState(seed).shuffle(paths)  # two generators with one seed: the same permutation
    np.random.RandomState(seed).shuffle(labels)
    n_val = int(validation_split * len(paths))
    if n_val < 1 or n_val >= len(paths):
        raise CorpusError(
            f"{root}: {len(paths)} documents are too few for validation_split={validation_split}; both splits must be non-empty"
        )
    pairs = list(zip(paths, labels, strict=True))
    return {"train": pairs[:-n_val], "validation": pairs[-n_val:]}


def _folder_root(paths) -> pathlib.Path | None:
    """The class-folder root when ``paths`` is one class-folder corpus (alone or in a one-item list)."""
    if not isinstance(paths, (str, os.PathLike)):
        paths = list(paths)
        if len(paths) != 1:
            return None
        paths = paths[0]
    return class_root(paths)


def make_splitter(
    paths: str | os.PathLike | Sequence[str | os.PathLike], spec: SplitSpec, **read_kwargs
) -> HashSplit | None:
    """The splitter for ``paths``: None for class folders without a test share (the notebook split),
    ``StratifiedSplit`` when a test share is asked for (one streaming pass), else ``HashSplit``."""
    if _folder_root(paths) is not None and spec.test_split == 0:
        return None
    if spec.test_split > 0:
        return StratifiedSplit.fit(iter_rows(paths, **read_kwargs), spec)
    return HashSplit(spec)


def effective_spec(spec: SplitSpec, validation_data=None, test_data=None) -> SplitSpec:
    """The shares that remain for the hash/stratified rule when separate validation/test files are given."""
    return dataclasses.replace(
        spec,
        validation_split=0.0 if validation_data is not None else spec.validation_split,
        test_split=0.0 if test_data is not None else spec.test_split,
    )


def iter_split(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    spec: SplitSpec = SplitSpec(),
    *,
    validation_data: str | Sequence[str] | None = None,
    test_data: str | Sequence[str] | None = None,
    splits: Sequence[str] = ("train", "validation", "test", DROPPED),
    splitter: HashSplit | None = None,
    **read_kwargs,
) -> Iterator[tuple[str, Row | BadRow]]:
    """Streams ``(split, row)`` pairs; ``BadRow``s come with split ``"dropped"``.

    Args:
      paths: the corpus (see ``corpus.iter_rows``).
      spec: shares and seed. A given ``validation_data``/``test_data`` replaces that share (its rows all go
        to that split, read with the same column options).
      validation_data: separate validation file(s).
      test_data: separate test file(s).
      splits: only yield these splits (a consumer building one split's dataset passes one name).
      splitter: a splitter from ``make_splitter`` to reuse across passes (epochs): the stratified plan is
        then computed once. Default: made here.
      **read_kwargs: ``text_columns``, ``label_column``, ... as for ``iter_rows``.

    Yields:
      ``(split name, Row)`` for class folders in the notebook order (train, then validation); for files in
      file order.
    """
    spec = effective_spec(spec, validation_data, test_data)
    wanted = set(splits)
    root = _folder_root(paths)
    if splitter is None:
        splitter = make_splitter(paths, spec, **read_kwargs)
    if splitter is None and root is not None:
        if validation_data is not None:
            raise CorpusError("--validation-data with class folders: pass the training documents as a file instead")
        plan = notebook_split(root, spec.validation_split, spec.seed)
        encoding = read_kwargs.get("encoding", "utf-8")
        for name in ("train", "validation"):
            if name in wanted or DROPPED in wanted:
                for path, label in plan[name]:
                    row = read_document(path, label, encoding)
                    split = DROPPED if isinstance(row, BadRow) else name
                    if split in wanted:
                        yield split, row
    else:
        if splitter is None:
            splitter = HashSplit(spec)
        for row in iter_rows(paths, **read_kwargs):
            split = DROPPED if isinstance(row, BadRow) else splitter.assign_row(row)
            if split in wanted:
                yield split, row
    for name, extra in (("validation", validation_data), ("test", test_data)):
        if extra is not None and (name in wanted or DROPPED in wanted):
            for row in iter_rows(extra, **read_kwargs):
                split = DROPPED if isinstance(row, BadRow) else name
                if split in wanted:
                    yield split, row
