"""Documents of a class-folder corpus (today's BBC layout): one ``.txt`` file per row, label = folder name."""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Iterator

from corpus.paths import folder_documents
from corpus.rows import BadRow, Row

logger = logging.getLogger(__name__)


def decode_document(data: bytes, encoding: str = "utf-8") -> tuple[str, bool]:
    """Text of a document and whether it had to be repaired.

    With the default UTF-8, bytes that are not valid UTF-8 are read as Latin-1: exactly what the exported
    graph's ``repair_utf8`` does, so the text is the same whichever side decodes it (BBC's ``sport/199.txt``
    holds a Latin-1 pound sign). Another ``encoding`` is applied as given, invalid bytes replaced.
    """
    if encoding.lower().replace("_", "-") not in {"utf-8", "utf8"}:
        return data.decode(encoding, errors="replace"), False
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("latin-1"), True


def read_document(path: str, label: str, encoding: str = "utf-8") -> Row | BadRow:
    """One document as a ``Row`` (id and source = its path), or a ``BadRow`` when it holds only whitespace."""
    data = pathlib.Path(path).read_bytes()
    text, repaired = decode_document(data, encoding)
    if repaired:
        logger.warning("%s is not valid UTF-8; read as Latin-1 (as the serving graph repairs it)", path)
    if not text.strip():
        return BadRow(path, path, "empty text")
    return Row(path, text, (label,), path)


def iter_folder(root: pathlib.Path, encoding: str = "utf-8") -> Iterator[Row | BadRow]:
    """Every document under ``root`` in ``index_directory`` order (classes sorted, then a sorted walk)."""
    for path, label in folder_documents(root):
        yield read_document(path, label, encoding)
