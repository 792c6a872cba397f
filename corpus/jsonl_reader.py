"""JSON-lines records, read line by line with the standard ``json`` module.

Line by line (rather than ``pyarrow.json``) because a bad line must become a ``BadRow`` naming its exact
line number and byte offset while every other line is still used; pyarrow's JSON reader fails the whole
block instead. A ``.json`` file holding one JSON array of objects is accepted too (read whole: meant for
small gold sets, say so in docs).

Values keep their JSON types (a label may be ``3``, ``"World"`` or ``["World", "Sports"]``); the caller
turns them into strings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence

from corpus.paths import open_binary
from corpus.rows import BadRow, CorpusError


def _first_byte(path: str) -> bytes:
    with open_binary(path) as f:
        while chunk := f.read(4096):
            stripped = chunk.lstrip(b"\xef\xbb\xbf \t\r\n")
            if stripped:
                return stripped[:1]
    return b""


def _check_columns(path: str, line: int, obj: dict, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in obj]
    if missing:
        raise CorpusError(
            f"{path}: unknown column(s) {', '.join(map(repr, missing))}; line {line} has keys "
            f"{', '.join(map(repr, obj)) or '(none)'}"
        )


def iter_records(path: str, columns: Sequence[str], *, encoding: str = "utf-8") -> Iterator[tuple[int, tuple] | BadRow]:
    """``(line number, values)`` per JSON object, or a ``BadRow`` for a line that is not a JSON object.

    Args:
      path: a JSON-lines file (one object per line; blank lines are skipped but still counted).
      columns: keys to read; the first object must have all of them (else ``CorpusError`` naming its
        keys); a later object missing one gets ``None`` for it.
      encoding: the file's text encoding.

    Raises:
      CorpusError: empty file, unknown column, or bytes not valid in ``encoding`` (line and byte offset).
    """
    if os.path.getsize(path) == 0 or not _first_byte(path):
        raise CorpusError(f"{path}: empty file")
    if _first_byte(path) == b"[":
        yield from _iter_array(path, columns, encoding)
        return
    checked = False
    offset = 0
    with open_binary(path) as f:
        for number, raw in enumerate(f, start=1):
            start, offset = offset, offset + len(raw)
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw, start = raw[3:], start + 3
            try:
                text = raw.decode(encoding).rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise CorpusError(
                    f"{path}: line {number}, byte offset {start + e.start}: bytes that are not valid {encoding}; "
                    "pass the file's encoding (e.g. --encoding latin-1)"
                ) from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                yield BadRow(f"{path}:{number}", path,
                             f"line {number}: invalid JSON ({e.msg}, byte offset {start + len(text[:e.pos].encode(encoding))})")
                continue
            if not isinstance(obj, dict):
                yield BadRow(f"{path}:{number}", path,
                             f"line {number}: a JSON {type(obj).__name__}, not an object (byte offset {start})")
                continue
            if not checked:
                _check_columns(path, number, obj, columns)
                checked = True
            yield number, tuple(obj.get(c) for c in columns)
    if not checked:
        raise CorpusError(f"{path}: empty file (no JSON object on any line)")


def _iter_array(path: str, columns: Sequence[str], encoding: str) -> Iterator[tuple[int, tuple] | BadRow]:
    try:
        with open_binary(path) as f:
            data = json.loads(f.read().decode("utf-8-sig" if encoding.lower() in {"utf-8", "utf8"} else encoding))
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}: byte offset {e.start}: bytes that are not valid {encoding}") from None
    except json.JSONDecodeError as e:
        raise CorpusError(f"{path}: line {e.lineno}: invalid JSON ({e.msg}, character offset {e.pos})") from None
    if not isinstance(data, list) or not data:
        raise CorpusError(f"{path}: empty file (a JSON array with no objects)")
    checked = False
    for number, obj in enumerate(data, start=1):
        if not isinstance(obj, dict):
            yield BadRow(f"{path}:{number}", path, f"element {number}: a JSON {type(obj).__name__}, not an object")
            continue
        if not checked:
            _check_columns(path, number, obj, columns)
            checked = True
        yield number, tuple(obj.get(c) for c in columns)
