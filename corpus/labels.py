"""The label set: which classes a model learns, in which order, and the checks that catch bad labels early.

Class names come from the data, sorted (numerically when every value is an integer, so ``2`` comes
before ``10``), or in the order of a ``--label-names`` map (``"1=World,2=Sports"`` or a file with one
``value=name`` per line), which also renames raw values to the names the model serves.

Every check raises ``CorpusError`` with one line (issue 19, point 7): one distinct value, a class with
fewer than ``min_examples`` rows, a map that misses a value present in the data, several labels (or an
empty label list) on a row without multi-label, no labelled rows at all.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
from collections.abc import Iterable, Mapping

from corpus.rows import BadRow, CorpusError, Row


def _quote_list(values: Iterable[str], limit: int = 10) -> str:
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def parse_label_names(spec: str | os.PathLike | Mapping[str, str] | None) -> dict[str, str] | None:
    """``{raw value: served name}`` in the given order, from ``"1=World,2=Sports"``, a file, or a mapping.

    A file has one ``value=name`` per line; blank lines and lines starting with ``#`` are skipped.

    Raises:
      CorpusError: an entry without ``=``, an empty value or name, a value or a name given twice.
    """
    if spec is None:
        return None
    if isinstance(spec, Mapping):
        pairs = [(str(k), str(v)) for k, v in spec.items()]
        where = "label names"
    else:
        spec = os.fspath(spec)
        if os.path.isfile(spec):
            with open(spec, encoding="utf-8-sig") as f:
                entries = [(n, line.strip()) for n, line in enumerate(f, start=1)]
            entries = [(n, e) for n, e in entries if e and not e.startswith("#")]
            where = spec
        else:
            entries = [(n, e.strip()) for n, e in enumerate(spec.split(","), start=1) if e.strip()]
            where = "--label-names"
        pairs = []
        for n, entry in entries:
            value, sep, name = entry.partition("=")
            if not sep or not value.strip() or not name.strip():
                unit = "line" if where != "--label-names" else "entry"
                raise CorpusError(f"{where}: {unit} {n} ({entry!r}) is not value=name, e.g. 1=World")
            pairs.append((value.strip(), name.strip()))
    mapping: dict[str, str] = {}
    for value, name in pairs:
        if value in mapping:
            raise CorpusError(f"{where}: value {value!r} is mapped twice")
        mapping[value] = name
    names = list(mapping.values())
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CorpusError(f"{where}: name(s) {_quote_list(twice)} are given to several values")
    if not mapping:
        raise CorpusError(f"{where}: no value=name entries")
    return mapping


@dataclasses.dataclass
class LabelCounts:
    """Streaming tally of label values (raw, before the names map): O(classes) memory."""

    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    rows: int = 0
    multi_rows: int = 0
    first_multi: str | None = None
    empty_rows: int = 0
    first_empty: str | None = None

    def add(self, row: Row | BadRow) -> None:
        if isinstance(row, BadRow):
            return
        self.rows += 1
        self.counts.update(set(row.labels))
        if not row.labels:
            self.empty_rows += 1
            if self.first_empty is None:
                self.first_empty = row.id
        if len(row.labels) > 1:
            self.multi_rows += 1
            if self.first_multi is None:
                self.first_multi = row.id


def count_labels(rows: Iterable[Row | BadRow]) -> LabelCounts:
    """One streaming pass: how many rows carry each raw label value."""
    tally = LabelCounts()
    for row in rows:
        tally.add(row)
    return tally


def _sort_key(values: Iterable[str]):
    values = list(values)
    if values and all(v.lstrip("-").isdigit() for v in values):
        return sorted(values, key=int)
    return sorted(values)


@dataclasses.dataclass(frozen=True)
class LabelSet:
    """The classes of a model.

    Attributes:
      names: served class names, in model output order.
      values: the raw data value of each name (same order); equal to ``names`` without a map.
      counts: rows per name (training data), same order.
      multi_label: whether a row may carry several labels.
    """

    names: tuple[str, ...]
    values: tuple[str, ...]
    counts: tuple[int, ...]
    multi_label: bool = False

    def index(self, value: str) -> int:
        """Model index of a raw label value; ``KeyError`` for a value the set does not know."""
        return self._lookup[value]

    def encode(self, labels: Iterable[str]) -> list[int]:
        """Sorted model indices of a row's raw label values."""
        return sorted({self._lookup[v] for v in labels})

    @functools.cached_property
    def _lookup(self) -> dict[str, int]:
        return {v: i for i, v in enumerate(self.values)}


def build_label_set(
    tally: LabelCounts,
    *,
    label_names: str | os.PathLike | Mapping[str, str] | None = None,
    min_examples: int = 2,
    multi_label: bool = False,
    where: str = "the data",
    column: str | None = None,
) -> LabelSet:
    """Checks the label values seen in the data and fixes the class order.

    Args:
      tally: label counts of the training rows (``count_labels``).
      label_names: optional ``value=name`` map (see ``parse_label_names``); fixes order and names.
      min_examples: every class needs at least this many rows.
      multi_label: allow several labels per row.
      where: the data's description for messages (its path).
      column: the label column's name for messages (None: class folders).

    Raises:
      CorpusError: see the module docstring; the message names the values and the flag to change.
    """
    if isinstance(min_examples, bool) or not isinstance(min_examples, int) or min_examples < 1:
        raise CorpusError(f"--min-examples must be a positive int, got {min_examples!r}")
    what = f"label column {column!r}" if column else "class folders"
    if tally.rows == 0 or not tally.counts:
        raise CorpusError(f"{where}: no labelled rows in {what}")
    if tally.multi_rows and not multi_label:
        raise CorpusError(
            f"{where}: row {tally.first_multi} has several labels ({tally.multi_rows} such rows); "
            "pass --multi-label to train a multi-label model"
        )
    if tally.empty_rows and not multi_label:
        raise CorpusError(
            f"{where}: row {tally.first_empty} has no label ({tally.empty_rows} such rows); give every row a label "
            "or pass --multi-label (where a row may have none)"
        )
    if len(tally.counts) == 1:
        (only,) = tally.counts
        raise CorpusError(f"{where}: {what} has one distinct value ({only!r}); a classifier needs at least 2")
    mapping = parse_label_names(label_names)
    if mapping is not None:
        unmapped = [v for v in _sort_key(tally.counts) if v not in mapping]
        if unmapped:
            raise CorpusError(
                f"{where}: --label-names has no name for value(s) {_quote_list(unmapped)} found in {what} "
                f"(it maps {_quote_list(mapping)})"
            )
        values = list(mapping)
    else:
        values = _sort_key(tally.counts)
    counts = [tally.counts.get(v, 0) for v in values]
    few = [(v, n) for v, n in zip(values, counts, strict=True) if n < min_examples]
    if few:
        detail = ", ".join(f"{(mapping or {}).get(v, v)!r}: {n}" for v, n in few[:10])
        raise CorpusError(
            f"{where}: {len(few)} label(s) have fewer than --min-examples={min_examples} rows ({detail}); "
            "add rows, merge or drop those labels, or lower --min-examples"
        )
    names = [(mapping or {}).get(v, v) for v in values]
    return LabelSet(tuple(names), tuple(values), tuple(counts), multi_label)
