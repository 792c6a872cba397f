"""A user's own labelled corpus (CSV/TSV, JSON lines, Parquet, globs, or class folders with a test set) as a
trainer `Corpus`, read through the `corpus` package.

The BBC class-folder path without test options never comes here: `trainer.data.load_corpus` keeps the seed
notebook's split byte for byte. Everything else streams through `corpus.split.iter_split` (a per-row hash split,
or a stratified one when a test share is asked for), is checked by `corpus.labels.build_label_set` (one-line
errors naming the file, row and value), and reported (rows dropped and why, class counts, imbalance,
duplicates across splits) before any TensorFlow work starts.

With `multi_label`, a row may carry several labels or none; its labels become a tuple of class ids.

The splits are held in memory as bytes, like the BBC corpus (fine to ~10^5 rows); training straight from the
stream is the next step of issue 19 (point 8).
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
from collections.abc import Sequence

from corpus.labels import build_label_set, count_labels
from corpus.paths import class_root, expand_paths
from corpus.report import build_report, format_report
from corpus.rows import BadRow, CorpusError, Row
from corpus.split import SplitSpec, iter_split
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
) -> Corpus:
    """Reads, splits, checks and reports a labelled corpus; returns the trainer's `Corpus` with a test split.

    Raises:
      DataError: every data problem, in one line (the `CorpusError` of the corpus package, re-raised).
    """
    paths = split_paths(data)
    read = {"text_columns": tuple(text_columns), "label_column": label_column, "encoding": encoding,
            "label_separator": label_separator}
    try:
        pairs = list(iter_split(paths, SplitSpec(validation_split, test_split, seed),
                                validation_data=validation_data, test_data=test_data, **read))
        rows = {"train": [], "validation": [], "test": []}
        dropped: list[BadRow] = []
        for split, row in pairs:
            (dropped.append(row) if isinstance(row, BadRow) else rows[split].append(row))
        rows["train"] = rows["train"][:max_train_docs]
        rows["validation"] = rows["validation"][:max_val_docs]
        tally = count_labels(rows["train"])
        labels = build_label_set(tally, label_names=label_names, min_examples=min_examples, where=str(data),
                                 column=label_column, multi_label=multi_label)
        for split in ("validation", "test"):
            _check_known(rows[split], labels, split, multi_label)
        if not rows["validation"]:
            raise CorpusError(f"{data}: the validation split is empty; give more rows, a larger "
                              "--validation-split or --validation-data")
        report = build_report(pairs)
    except CorpusError as e:
        raise DataError(str(e)) from None
    _log_drops(dropped)
    log.info("data report:\n%s", format_report(report.finish()))
    if dedup:
        duplicates = report.cross_split_duplicate_ids()
        for split in ("validation", "test"):
            before = len(rows[split])
            rows[split] = [r for r in rows[split] if r.id not in duplicates]
            if before != len(rows[split]):
                log.info("--dedup: removed %d %s row(s) that duplicate an earlier split (exact, normalized or "
                         "near)", before - len(rows[split]), split)

    def texts(split):
        return tuple(r.text.encode("utf-8") for r in rows[split])

    def ids(split):
        if multi_label:
            return tuple(tuple(labels.encode(r.labels)) for r in rows[split])
        return tuple(labels.index(r.labels[0]) for r in rows[split])

    digest = hashlib.sha256()
    for split in ("train", "validation", "test"):
        for r in rows[split]:
            # Single-label rows hash as before (fingerprints of existing runs stay valid).
            label = "|".join(sorted(r.labels)) if multi_label else r.labels[0]
            digest.update(f"{split}\t{r.id}\t{label}\t".encode())
            digest.update(hashlib.sha256(r.text.encode("utf-8")).digest())
    corpus = Corpus(
        class_names=labels.names,
        train_texts=texts("train"), train_labels=ids("train"), train_paths=tuple(r.id for r in rows["train"]),
        val_texts=texts("validation"), val_labels=ids("validation"),
        val_paths=tuple(r.id for r in rows["validation"]),
        invalid_utf8_paths=(), fingerprint=digest.hexdigest(),
        test_texts=texts("test"), test_labels=ids("test"), test_paths=tuple(r.id for r in rows["test"]),
        multi_label=multi_label,
    )
    log.info("corpus %s: %d classes, %d train / %d validation / %d test rows (%d dropped)", data,
             len(labels.names), len(rows["train"]), len(rows["validation"]), len(rows["test"]), len(dropped))
    return corpus


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


def _log_drops(dropped: list[BadRow]) -> None:
    if not dropped:
        return
    reasons = collections.Counter(r.reason.split(":")[0] if r.reason.startswith("line ") else r.reason
                                  for r in dropped)
    log.warning("%d row(s) dropped: %s", len(dropped), ", ".join(f"{n} {why}" for why, n in reasons.items()))
    for row in dropped[:_NAMED_DROPS]:
        log.warning("  dropped %s: %s", row.id, row.reason)
