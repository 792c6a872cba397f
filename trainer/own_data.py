"""A user's own labelled corpus (CSV/TSV, JSON lines, Parquet, globs, or class folders with a test set) as a
trainer `Corpus`, read through the `corpus` package.

The BBC class-folder path without test options never comes here: `trainer.data.load_corpus` keeps the seed
notebook's split byte for byte. Everything else streams through `corpus.split.iter_split` (a per-row hash split,
or a stratified one when a test share is asked for), is checked by `corpus.labels.build_label_set` (one-line
errors naming the file, row and value), and reported (rows dropped and why, class counts, imbalance,
duplicates across splits) before any TensorFlow work starts.

With `multi_label`, a row may carry several labels or none; its labels become a tuple of class ids.

Validation and test rows are held in memory as bytes. The trainer reads the training split as a `TrainStream`
(the files again, every epoch), so a corpus larger than memory trains; tools that need the training texts at hand
(the TF-IDF baseline, tests) keep them in memory instead.
"""

from __future__ import annotations

import array
import dataclasses
import hashlib
import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np

from corpus import neardup
from corpus.labels import LabelCounts, LabelSet, build_label_set
from corpus.paths import class_root, expand_paths
from corpus.report import DataReport, format_report
from corpus.rows import BadRow, CorpusError, Row
from corpus.split import HashSplit, SplitSpec, effective_spec, iter_split, make_splitter
from trainer.data import Corpus, DataError

log = logging.getLogger("bertbc.trainer")

# How many dropped rows are named one by one in the log (all are counted).
_NAMED_DROPS = 5


def split_paths(data: str) -> str | list[str]:
    """`--data a.csv,b.csv` names several files; a path that exists as written is taken whole."""
    if os.path.exists(data) or "," not in data:
        return data
    return [p for p in data.split(",") if p]


def is_plain_folder_corpus(data: str | None, *, test_split: float, test_data: str | None,
                           validation_data: str | None, encoding: str, dedup: bool = False,
                           multi_label: bool = False) -> bool:
    """Whether `data` takes today's class-folder path (the seed notebook's split, exactly).

    A missing path or a folder with neither class folders nor data files goes there too, for its messages
    about the expected layout.
    """
    if test_split or test_data is not None or validation_data is not None or dedup or multi_label:
        return False
    if data is None:
        return True
    if encoding.lower().replace("_", "-") not in ("utf-8", "utf8"):
        return False
    if class_root(data) is not None:
        return True
    if not any(c in data for c in "*?[,") and not os.path.exists(data):
        return True
    if os.path.isdir(data):
        try:
            expand_paths(data)
        except CorpusError:
            return True
    return False


@dataclasses.dataclass(frozen=True)
class TrainStream:
    """The training split read again from the files, row by row, each time it is iterated (one epoch).

    Yields ``(text as UTF-8 bytes, label)``: a class id, or for a multi-label corpus a tuple of class ids, in the
    order of the first pass (the split is decided per row, so every pass gives the same rows). Nothing is held:
    memory is O(one reader block), whatever the corpus size.
    """

    paths: str | list[str]
    spec: SplitSpec
    splitter: HashSplit | None
    read: dict
    validation_data: str | None
    test_data: str | None
    labels: LabelSet
    rows: int
    multi_label: bool = False
    # The training rows each data file gave the counting pass, in reading order (empty for class folders): each
    # file is read up to its count, and FILE sharding (`trainer.sharding`) divides the files among workers.
    file_rows: tuple[tuple[str, int], ...] = ()

    def __iter__(self) -> Iterator[tuple[bytes, int | tuple[int, ...]]]:
        if not self.file_rows:
            yield from self._rows(self.paths, self.rows)
        for path, rows in self.file_rows:
            yield from self._rows(path, rows)

    def shard(self, files: Sequence[str]) -> TrainStream:
        """The stream of only these files (one worker's share under FILE sharding)."""
        wanted = set(files)
        chosen = tuple((path, rows) for path, rows in self.file_rows if path in wanted)
        if len(chosen) != len(wanted):
            raise ValueError(f"not training files of this corpus: {sorted(wanted - {p for p, _ in chosen})}")
        return dataclasses.replace(self, paths=[p for p, _ in chosen], rows=sum(n for _, n in chosen),
                                   file_rows=chosen)

    def _rows(self, paths, expected: int) -> Iterator[tuple[bytes, int | tuple[int, ...]]]:
        n = 0
        for _, row in iter_split(paths, self.spec, validation_data=self.validation_data,
                                 test_data=self.test_data, splits=("train",), splitter=self.splitter, **self.read):
            if n == expected:
                return
            n += 1
            label = tuple(self.labels.encode(row.labels)) if self.multi_label else self.labels.index(row.labels[0])
            yield row.text.encode("utf-8"), label
        if n != expected:
            raise DataError(f"{paths}: the training split now has {n} rows, the run counted {expected}; the "
                            "data changed while training. Restore it, or start a new run (--new-run)")


def load_own_corpus(
    data: str,
    *,
    text_columns: Sequence[str] = ("text",),
    label_column: str = "label",
    label_names: str | None = None,
    encoding: str = "utf-8",
    validation_split: float = 0.2,
    test_split: float = 0.0,
    seed: int = 42,
    validation_data: str | None = None,
    test_data: str | None = None,
    min_examples: int = 2,
    dedup: bool = False,
    max_train_docs: int | None = None,
    max_val_docs: int | None = None,
    multi_label: bool = False,
    label_separator: str | None = None,
    stream_train: bool = False,
) -> Corpus:
    """Reads, splits, checks and reports a labelled corpus; returns the trainer's `Corpus` with a test split.

    One streaming pass reads every row: validation and test rows are kept, training rows are counted, hashed into
    the fingerprint and reported. With `stream_train` the training texts are not kept either: `Corpus.train_stream`
    reads them again per epoch (issue 19, point 8); the training labels stay, as class ids (a few bytes a row).

    Raises:
      DataError: every data problem, in one line (the `CorpusError` of the corpus package, re-raised).
    """
    paths = split_paths(data)
    read = {"text_columns": tuple(text_columns), "label_column": label_column, "encoding": encoding,
            "label_separator": label_separator}
    digest = hashlib.sha256()
    try:
        spec = effective_spec(SplitSpec(validation_split, test_split, seed), validation_data, test_data)
        splitter = make_splitter(paths, spec, **read)
        report = DataReport()
        tally = LabelCounts()
        train_rows: list[Row] = []
        train_codes = _LabelCodes()
        train_keys = array.array("Q")
        held: dict[str, list[Row]] = {"validation": [], "test": []}
        n_train = 0
        file_rows: dict[str, int] = {}
        for split, row in iter_split(paths, spec, validation_data=validation_data, test_data=test_data,
                                     splitter=splitter, **read):
            report.add(split, row)  # counts and names dropped rows too
            if isinstance(row, BadRow):
                continue
            if split != "train":
                held[split].append(row)
            elif max_train_docs is None or n_train < max_train_docs:
                n_train += 1
                file_rows[row.source] = file_rows.get(row.source, 0) + 1
                tally.add(row)
                train_codes.add(row.labels)
                _hash_row(digest, "train", row, multi_label)  # train rows come first in the fingerprint
                if stream_train:
                    train_keys.append(neardup.exact_key(row.text))
                else:
                    train_rows.append(row)
        held["validation"] = held["validation"][:max_val_docs]
        labels = build_label_set(tally, label_names=label_names, min_examples=min_examples, where=str(data),
                                 column=label_column, multi_label=multi_label)
        for split in ("validation", "test"):
            _check_known(held[split], labels, split, multi_label)
        if not held["validation"]:
            raise CorpusError(f"{data}: the validation split is empty; give more rows, a larger "
                              "--validation-split or --validation-data")
    except CorpusError as e:
        raise DataError(str(e)) from None
    result = report.finish()
    _log_drops(result)
    log.info("data report:\n%s", format_report(result))
    if dedup:
        duplicates = report.cross_split_duplicate_ids()
        for split in ("validation", "test"):
            before = len(held[split])
            held[split] = [r for r in held[split] if r.id not in duplicates]
            if before != len(held[split]):
                log.info("--dedup: removed %d %s row(s) that duplicate an earlier split (exact, normalized or "
                         "near)", before - len(held[split]), split)
    for split in ("validation", "test"):
        for r in held[split]:
            _hash_row(digest, split, r, multi_label)

    def texts(rows):
        return tuple(r.text.encode("utf-8") for r in rows)

    def ids(rows):
        if multi_label:
            return tuple(tuple(labels.encode(r.labels)) for r in rows)
        return tuple(labels.index(r.labels[0]) for r in rows)

    stream, leak = None, None
    if stream_train:
        stream = TrainStream(paths, spec, splitter, read, validation_data, test_data, labels, n_train, multi_label,
                             file_rows=() if _is_class_folders(paths) else tuple(file_rows.items()))
        val_keys = np.array([neardup.exact_key(r.text) for r in held["validation"]], dtype=np.uint64)
        leak = tuple(bool(x) for x in np.isin(val_keys, np.frombuffer(train_keys, dtype=np.uint64)))
    corpus = Corpus(
        class_names=labels.names,
        train_texts=texts(train_rows), train_labels=train_codes.to_ids(labels, multi_label),
        train_paths=tuple(r.id for r in train_rows),
        val_texts=texts(held["validation"]), val_labels=ids(held["validation"]),
        val_paths=tuple(r.id for r in held["validation"]),
        invalid_utf8_paths=(), fingerprint=digest.hexdigest(),
        test_texts=texts(held["test"]), test_labels=ids(held["test"]), test_paths=tuple(r.id for r in held["test"]),
        multi_label=multi_label, train_stream=stream, val_leak=leak,
    )
    log.info("corpus %s: %d classes, %d train / %d validation / %d test rows (%d dropped)%s", data,
             len(labels.names), n_train, len(held["validation"]), len(held["test"]), result["dropped"],
             "; training rows are streamed from the files every epoch" if stream_train else "")
    return corpus


def _is_class_folders(paths: str | list[str]) -> bool:
    """A class-folder corpus has one document a file: its rows are divided by DATA, never by file."""
    return any(class_root(p) is not None for p in ([paths] if isinstance(paths, str) else paths))


def _hash_row(digest, split: str, row: Row, multi_label: bool) -> None:
    # Single-label rows hash as before (fingerprints of existing runs stay valid).
    label = "|".join(sorted(row.labels)) if multi_label else row.labels[0]
    digest.update(f"{split}\t{row.id}\t{label}\t".encode())
    digest.update(hashlib.sha256(row.text.encode("utf-8")).digest())


class _LabelCodes:
    """Training labels as small integers while the label set is not known yet (a few bytes a row)."""

    def __init__(self):
        self.vocab: dict[str, int] = {}
        self.codes = array.array("i")
        self.ends = array.array("q")

    def add(self, values: Sequence[str]) -> None:
        for value in values:
            self.codes.append(self.vocab.setdefault(value, len(self.vocab)))
        self.ends.append(len(self.codes))

    def to_ids(self, labels: LabelSet, multi_label: bool) -> tuple:
        if not multi_label:
            lookup = [labels.index(v) for v in self.vocab]
            return tuple(lookup[c] for c in self.codes)
        values, codes, ends = list(self.vocab), self.codes, self.ends
        return tuple(tuple(labels.encode(values[c] for c in codes[(ends[i - 1] if i else 0):ends[i]]))
                     for i in range(len(ends)))


def _log_drops(result: dict) -> None:
    """Dropped rows as counted and named by the data report, as warnings before it."""
    if not result["dropped"]:
        return
    log.warning("%d row(s) dropped: %s", result["dropped"],
                ", ".join(f"{n} {why}" for why, n in result["dropped_reasons"].items()))
    for example in result["dropped_examples"][:_NAMED_DROPS]:
        log.warning("  dropped %s: %s", example["id"], example["reason"])


def _check_known(rows: list[Row], labels, split: str, multi_label: bool = False) -> None:
    for row in rows:
        if len(row.labels) != 1 and not multi_label:
            raise CorpusError(f"{row.id}: {len(row.labels)} labels in the {split} split; single-label training "
                              "needs exactly one per row (or pass --multi-label)")
        for value in row.labels:
            try:
                labels.index(value)
            except KeyError:
                raise CorpusError(f"{row.id}: label {value!r} of the {split} split is not among the training "
                                  f"labels ({', '.join(labels.values[:10])}); add training rows for it or drop the "
                                  "row") from None
