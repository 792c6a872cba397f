"""The row types every reader yields, and the one error type for bad user data.

Both consumers (the trainer and the batch-scoring job) code against these three names only, so a new
format is a new reader, never a new row shape.
"""

from __future__ import annotations

import dataclasses


class CorpusError(ValueError):
    """A user-facing data problem: ONE line naming the file, row/line, byte offset or columns at fault.

    Callers print ``str(error)`` and exit; no traceback is needed to understand it.
    """


@dataclasses.dataclass(frozen=True)
class Row:
    """One readable row.

    Attributes:
      id: stable row id: ``"<path>:<row number>"`` for files (1-based data row, the header not counted),
        the value of ``id_column`` when one is given, or the file path for class folders.
      text: the text columns joined (see ``corpus.readers.join_text``).
      labels: label values as strings (ints become ``"1"``); empty when no label column was asked for.
      source: the file the row came from.
    """

    id: str
    text: str
    labels: tuple[str, ...]
    source: str


@dataclasses.dataclass(frozen=True)
class BadRow:
    """A row that cannot be used: reported and counted, never silently dropped.

    Attributes:
      id: as for ``Row`` (``"<path>:<row or line number>"``).
      source: the file it came from.
      reason: one line, e.g. ``"empty text"``, ``"missing label"``,
        ``"line 17: invalid JSON (byte offset 2345)"``.
    """

    id: str
    source: str
    reason: str
