"""The data report: what was read, what was dropped and why, class balance, duplicates across splits, lengths.

``DataReport`` is fed ``(split, row)`` pairs (from ``corpus.split.iter_split``) one at a time and keeps
only counters, 8-byte keys per row, the ids of validation/test rows and, for corpora up to
``corpus.neardup.NEAR_MAX_ROWS`` rows, MinHash signatures: never the texts. ``finish()`` returns a JSON-able
dict; ``format_report`` prints it; ``cross_split_duplicate_ids`` feeds ``--dedup``.

Word-piece lengths need the tokenizer, i.e. TensorFlow, which this package does not import: the trainer
passes ``lengths_fn`` (texts -> lengths); without it lengths are whitespace words and the report says so.
"""

from __future__ import annotations

import array
import collections
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from corpus import neardup
from corpus.rows import BadRow, Row

LengthsFn = Callable[[list[str]], Sequence[int]]
SPLIT_ORDER = ("train", "validation", "test")
EXAMPLES_KEPT = 20
_LENGTH_BATCH = 512
_PREFIX = re.compile(r"^(row|line|element) \d+: ")
# Which earlier split a duplicate in a later split is checked against: train first, then validation.
_AGAINST = {"validation": ("train",), "test": ("train", "validation")}


def balanced_class_weights(counts: Mapping[str, int]) -> dict[str, float]:
    """Inverse-frequency loss weights: ``n_rows / (n_classes * count)`` (scikit-learn's "balanced").

    A class with the average count gets 1.0; rarer ones more. For multi-label, ``counts`` are rows per
    label and the weights scale each label's positive term.
    """
    present = {k: v for k, v in counts.items() if v > 0}
    total = sum(present.values())
    return {k: total / (len(present) * v) for k, v in present.items()}


def _percentiles(x: np.ndarray) -> dict:
    if x.size == 0:
        return {"count": 0}
    p = np.percentile(x, [50, 90, 95, 99])
    return {"count": int(x.size), "min": int(x.min()), "mean": float(x.mean()), "p50": float(p[0]),
            "p90": float(p[1]), "p95": float(p[2]), "p99": float(p[3]), "max": int(x.max())}


class DataReport:
    """Streaming accumulator of the data report (see the module docstring).

    Args:
      lengths_fn: maps a batch of texts to their word-piece lengths; None: whitespace word counts.
      near_duplicates: search near duplicates; None = only while the corpus has at most ``near_max_rows`` rows.
      near_max_rows: the row limit of the automatic choice.
      threshold: estimated Jaccard similarity of word 5-shingles that counts as a near duplicate.
    """

    def __init__(self, *, lengths_fn: LengthsFn | None = None, near_duplicates: bool | None = None,
                 near_max_rows: int = neardup.NEAR_MAX_ROWS, threshold: float = neardup.THRESHOLD):
        self.lengths_fn = lengths_fn
        self.threshold = threshold
        self._near = near_duplicates
        self._near_max = near_max_rows if near_duplicates is None else None
        self.rows = collections.Counter()
        self.dropped = collections.Counter()
        self.dropped_examples: list[dict] = []
        self.classes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self._exact = {s: array.array("Q") for s in SPLIT_ORDER}
        self._normal = {s: array.array("Q") for s in SPLIT_ORDER}
        self._ids: dict[str, list[str]] = {"validation": [], "test": []}
        self._signatures: dict[str, list[np.ndarray]] | None = (
            {s: [] for s in SPLIT_ORDER} if near_duplicates is not False else None)
        self._lengths = {s: array.array("i") for s in SPLIT_ORDER}
        self._pending: dict[str, list[str]] = {s: [] for s in SPLIT_ORDER}
        self._fingerprint = 0
        self._result: dict | None = None

    def add(self, split: str, row: Row | BadRow) -> None:
        """Counts one row; ``split`` is ``train``/``validation``/``test`` (any name for a ``BadRow``)."""
        if isinstance(row, BadRow):
            self.dropped[_PREFIX.sub("", row.reason)] += 1
            if len(self.dropped_examples) < EXAMPLES_KEPT:
                self.dropped_examples.append({"id": row.id, "reason": row.reason})
            return
        if split not in self._exact:
            raise ValueError(f"split must be one of {SPLIT_ORDER}, got {split!r}")
        self.rows[split] += 1
        self.classes[split].update(row.labels)
        self._exact[split].append(neardup.exact_key(row.text))
        self._normal[split].append(neardup.normalized_key(row.text))
        if split in self._ids:
            self._ids[split].append(row.id)
        if self._signatures is not None:
            if self._near_max is not None and sum(self.rows.values()) > self._near_max:
                self._signatures = None  # too large for the automatic near-duplicate search
            else:
                self._signatures[split].append(neardup.minhash(row.text))
        digest = hashlib.sha256("\0".join((split, row.id, "\x1f".join(row.labels), row.text)).encode(
            "utf-8", "surrogatepass")).digest()
        self._fingerprint = (self._fingerprint + int.from_bytes(digest, "big")) % (1 << 256)
        self._pending[split].append(row.text)
        if len(self._pending[split]) >= _LENGTH_BATCH:
            self._flush(split)

    def _flush(self, split: str) -> None:
        texts = self._pending[split]
        if not texts:
            return
        if self.lengths_fn is None:
            lengths = [len(t.split()) for t in texts]
        else:
            lengths = [int(n) for n in np.asarray(self.lengths_fn(texts)).reshape(-1)]
            if len(lengths) != len(texts):
                raise ValueError(f"lengths_fn returned {len(lengths)} lengths for {len(texts)} texts")
        self._lengths[split].extend(lengths)
        self._pending[split] = []

    def _cross(self, keys: dict[str, array.array]) -> dict[str, np.ndarray]:
        """Per validation/test split: mask of rows whose key is in an earlier split."""
        out = {}
        for split, against in _AGAINST.items():
            mine = np.frombuffer(keys[split], dtype=np.uint64)
            seen = np.concatenate([np.frombuffer(keys[s], dtype=np.uint64) for s in against])
            out[split] = np.isin(mine, seen)
        return out

    def _near_cross(self) -> dict[str, np.ndarray] | None:
        if self._signatures is None:
            return None
        out = {}
        for split, against in _AGAINST.items():
            index = neardup.NearIndex(self.threshold)
            for s in against:
                for sig in self._signatures[s]:
                    index.add(sig)
            out[split] = np.array([bool(index.query(sig)) for sig in self._signatures[split]], dtype=bool)
        return out

    def finish(self) -> dict:
        """The report as a JSON-able dict (computed once; later calls return the same dict)."""
        if self._result is not None:
            return self._result
        for split in SPLIT_ORDER:
            self._flush(split)
        exact, normal, near = self._cross(self._exact), self._cross(self._normal), self._near_cross()
        self._dup_masks = {s: exact[s] | normal[s] | (near[s] if near else False) for s in _AGAINST}
        all_exact = np.concatenate([np.frombuffer(self._exact[s], dtype=np.uint64) for s in SPLIT_ORDER])
        train = self.classes["train"]
        counts = [n for n in train.values() if n > 0]
        duplicates = {"extra_copies": int(all_exact.size - np.unique(all_exact).size),
                      "near_duplicates_searched": near is not None, "near_threshold": self.threshold}
        for split, against in _AGAINST.items():
            also = "_or_".join(against)
            duplicates[f"{split}_exact_in_{also}"] = int(exact[split].sum())
            duplicates[f"{split}_normalized_in_{also}"] = int(normal[split].sum())
            duplicates[f"{split}_near_in_{also}"] = int(near[split].sum()) if near else None
            duplicates[f"{split}_any_in_{also}"] = int(self._dup_masks[split].sum())
        all_lengths = np.concatenate([np.frombuffer(self._lengths[s], dtype=np.int32) for s in SPLIT_ORDER])
        self._result = {
            "rows_read": sum(self.rows.values()) + sum(self.dropped.values()),
            "rows": {s: self.rows[s] for s in SPLIT_ORDER},
            "dropped": sum(self.dropped.values()),
            "dropped_reasons": dict(self.dropped.most_common()),
            "dropped_examples": self.dropped_examples,
            "class_counts": {s: dict(sorted(self.classes[s].items())) for s in SPLIT_ORDER},
            "imbalance_ratio": (max(counts) / min(counts)) if counts else None,
            "duplicates": duplicates,
            "length_unit": "word_pieces" if self.lengths_fn else "whitespace_words",
            "lengths": {
                **{s: _percentiles(np.frombuffer(self._lengths[s], dtype=np.int32)) for s in SPLIT_ORDER},
                "all": _percentiles(all_lengths),
            },
            "fingerprint": f"{self._fingerprint:064x}",
        }
        return self._result

    def cross_split_duplicate_ids(self) -> frozenset[str]:
        """Ids of validation rows that duplicate train, and of test rows that duplicate train or validation
        (exact, normalized or near): what ``--dedup`` removes."""
        self.finish()
        return frozenset(
            i for split in _AGAINST for i, dup in zip(self._ids[split], self._dup_masks[split], strict=True) if dup
        )


def build_report(pairs: Iterable[tuple[str, Row | BadRow]], **kwargs) -> DataReport:
    """A finished ``DataReport`` over ``(split, row)`` pairs (``kwargs`` as for ``DataReport``)."""
    report = DataReport(**kwargs)
    for split, row in pairs:
        report.add(split, row)
    report.finish()
    return report


def dedup(pairs: Iterable[tuple[str, Row | BadRow]], duplicate_ids: frozenset[str]) -> Iterator[tuple[str, Row | BadRow]]:
    """``pairs`` without the validation/test rows named in ``duplicate_ids`` (train is never touched)."""
    for split, row in pairs:
        if split in _AGAINST and isinstance(row, Row) and row.id in duplicate_ids:
            continue
        yield split, row


def format_report(result: dict) -> str:
    """A few plain-text lines for the log and the terminal."""
    rows, dup = result["rows"], result["duplicates"]
    lines = [
        f"rows read {result['rows_read']}: train {rows['train']}, validation {rows['validation']}, "
        f"test {rows['test']}, dropped {result['dropped']}",
    ]
    for reason, n in result["dropped_reasons"].items():
        lines.append(f"  dropped {n}: {reason}")
    for example in result["dropped_examples"][:5]:
        lines.append(f"    e.g. {example['id']}: {example['reason']}")
    train = result["class_counts"]["train"]
    if train:
        shown = ", ".join(f"{k} {v}" for k, v in list(train.items())[:20])
        more = f" (+{len(train) - 20} more)" if len(train) > 20 else ""
        lines.append(f"train classes: {shown}{more}; imbalance ratio {result['imbalance_ratio']:.1f}")
    near = "" if dup["near_duplicates_searched"] else " (near duplicates not searched: corpus too large)"
    lines.append(
        f"duplicates: {dup['extra_copies']} extra exact copies; validation also in train: "
        f"{dup['validation_exact_in_train']} exact, {dup['validation_any_in_train']} incl. normalized/near; "
        f"test also in train/validation: {dup['test_exact_in_train_or_validation']} exact, "
        f"{dup['test_any_in_train_or_validation']} incl. normalized/near{near}"
    )
    a = result["lengths"]["all"]
    if a.get("count"):
        lines.append(f"lengths ({result['length_unit']}): p50 {a['p50']:.0f}, p95 {a['p95']:.0f}, max {a['max']}")
    return "\n".join(lines)
