"""``iter_rows``: the one streaming API over every supported format.

Columns:

* ``text_columns`` are joined in the given order with a blank line (``"\\n\\n"``) between non-empty
  values. A blank line is the layout of the BBC files (title, blank line, body), so a ``title``/``body``
  table gives the model exactly the text the class folders give it; values are not otherwise changed.
* ``label_column`` values become strings: ``3`` -> ``"3"``, ``3.0`` -> ``"3"``, ``"World"`` stays; a list
  (JSON array, Parquet list) is a multi-label row; with ``label_separator`` a string is split on it
  (``"World|Sports"``), parts stripped, empty parts dropped. An empty list is a row with no labels.
* ``id_column`` gives the row id; without it the id is ``"<path>:<n>"`` where n is the 1-based data row
  (CSV/TSV/Parquet: the header not counted) or the line number (JSON lines).

Rows that cannot be used (empty text, missing label, missing id, a line that is not JSON) are yielded as
``BadRow`` with a one-line reason; file-level problems (unknown column, empty file, undecodable bytes,
a malformed CSV record) raise ``CorpusError``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from corpus import csv_reader, jsonl_reader, parquet_reader
from corpus.folder_reader import iter_folder
from corpus.paths import class_root, detect_format, expand_paths
from corpus.rows import BadRow, CorpusError, Row

TEXT_SEPARATOR = "\n\n"


def join_text(values: Sequence[object]) -> str:
    """Non-empty text values joined with a blank line (``None`` and ``""`` are skipped)."""
    parts = [v if isinstance(v, str) else str(v) for v in values if v is not None and v != ""]
    return TEXT_SEPARATOR.join(parts)


def _label_str(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def label_values(value: object, separator: str | None = None) -> tuple[str, ...] | None:
    """Label strings of one cell, or None when the label is missing (null or empty string)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return tuple(s for s in (_label_str(v) for v in value if v is not None) if s)
    if isinstance(value, str):
        if separator:
            parts = tuple(p.strip() for p in value.split(separator))
            parts = tuple(p for p in parts if p)
            return parts or None
        value = value.strip()
        return (value,) if value else None
    return (_label_str(value),)


def _check_columns(text_columns: Sequence[str], label_column: str | None, id_column: str | None) -> None:
    if isinstance(text_columns, str):
        raise CorpusError(f"text_columns must be a list of column names, got the string {text_columns!r}")
    if not text_columns:
        raise CorpusError("at least one text column is needed (--text-column NAME)")
    if label_column is not None and label_column in text_columns:
        raise CorpusError(f"column {label_column!r} cannot be both a text column and the label column")


def _records(path: str, fmt: str, columns: list[str], encoding: str):
    if fmt in ("csv", "tsv"):
        return csv_reader.iter_records(path, columns, delimiter="\t" if fmt == "tsv" else ",", encoding=encoding)
    if fmt == "jsonl":
        return jsonl_reader.iter_records(path, columns, encoding=encoding)
    return parquet_reader.iter_records(path, columns)


def _iter_file(
    path: str, fmt: str, text_columns: Sequence[str], label_column: str | None, id_column: str | None,
    encoding: str, label_separator: str | None,
) -> Iterator[Row | BadRow]:
    columns = list(text_columns) + [c for c in (label_column, id_column) if c is not None]
    n_text = len(text_columns)
    label_at = n_text if label_column is not None else None
    id_at = len(columns) - 1 if id_column is not None else None
    for record in _records(path, fmt, columns, encoding):
        if isinstance(record, BadRow):
            yield record
            continue
        number, values = record
        row_id = f"{path}:{number}"
        if id_at is not None:
            value = values[id_at]
            if value is None or str(value).strip() == "":
                yield BadRow(row_id, path, f"row {number}: missing id (column {id_column!r})")
                continue
            row_id = str(value)
        text = join_text(values[:n_text])
        if not text.strip():
            yield BadRow(row_id, path, f"row {number}: empty text (column(s) {', '.join(map(repr, text_columns))})")
            continue
        labels: tuple[str, ...] = ()
        if label_at is not None:
            found = label_values(values[label_at], label_separator)
            if found is None:
                yield BadRow(row_id, path, f"row {number}: missing label (column {label_column!r})")
                continue
            labels = found
        yield Row(row_id, text, labels, path)


def iter_rows(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    text_columns: Sequence[str] = ("text",),
    label_column: str | None = None,
    id_column: str | None = None,
    encoding: str = "utf-8",
    label_separator: str | None = None,
    file_format: str | None = None,
) -> Iterator[Row | BadRow]:
    """Streams the rows of a corpus: one ``Row`` or ``BadRow`` per record, files in sorted order.

    Nothing is held beyond the current block of the current file, so corpora larger than memory stream.

    Args:
      paths: a class-folder corpus, a data file, a folder of data files, a glob, or several files/globs.
      text_columns: columns joined into ``Row.text`` (ignored for class folders: the file is the text).
      label_column: column holding the label(s); None gives rows without labels (class folders always
        have their folder name as label).
      id_column: column holding a stable row id (default ``"<path>:<row>"``).
      encoding: text encoding of CSV/TSV/JSON files (e.g. ``"latin-1"``); a UTF-8 BOM is always skipped.
      label_separator: splits a string label into several (multi-label CSV), e.g. ``"|"``.
      file_format: ``csv``/``tsv``/``jsonl``/``parquet`` for every file, instead of their extensions.

    Yields:
      ``Row`` for every usable record, ``BadRow`` (with a one-line reason) for every unusable one.

    Raises:
      CorpusError: nothing matches, unknown column, empty file, undecodable or malformed file (one line).

    Example:
      >>> for row in iter_rows("news.csv", text_columns=["title", "body"], label_column="topic"):
      ...     print(row.id, row.labels)
    """
    items = [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else [os.fspath(p) for p in paths]
    if len(items) == 1 and (root := class_root(items[0])) is not None:
        expand_paths(items)  # raises when the class folders hold no documents
        yield from iter_folder(root, encoding)
        return
    _check_columns(text_columns, label_column, id_column)
    files = expand_paths(items)
    formats = [detect_format(f, file_format) for f in files]  # all checked before the first row
    for path, fmt in zip(files, formats, strict=True):
        yield from _iter_file(path, fmt, text_columns, label_column, id_column, encoding, label_separator)
