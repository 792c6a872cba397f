"""CSV/TSV records, streamed with ``pyarrow.csv.open_csv`` in 1 MB blocks (files larger than memory are fine).

RFC 4180 quoting: fields in double quotes may hold the delimiter, doubled quotes (``""``) and newlines; a
UTF-8 byte-order mark is skipped; other encodings (``latin-1``, ``cp1252``) are transcoded by pyarrow.
Every value is read as a string, so integer labels stay exactly as written (``"01"`` is not ``"1"``).

A file whose structure is broken (a record with the wrong number of fields, bytes that are not valid in
the encoding) raises ``CorpusError`` naming the file, the record, the line and the byte offset: such a
file cannot be read row by row reliably, and a silent skip would shift every later row id. The exact
position is found by re-reading the file with Python's ``csv`` module, only once an error happened.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.csv as pa_csv

from corpus.paths import open_binary
from corpus.rows import CorpusError

# Bytes parsed per batch: memory is bounded by it whatever the file size (on a 1 GB CSV, 1 MB blocks peak at
# ~130 MB RSS, 16 MB blocks at ~780 MB, same speed). A record longer than a block is retried with larger blocks.
BLOCK_SIZE = 1 << 20
MAX_BLOCK_SIZE = 1 << 30


def _header(path: str, delimiter: str, encoding: str) -> list[str]:
    try:
        reader = pa_csv.open_csv(
            path, read_options=pa_csv.ReadOptions(block_size=1 << 16, encoding=encoding, use_threads=False),
            parse_options=pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        raise _explain(path, delimiter, encoding, e) from None
    return list(reader.schema.names)


def iter_records(
    path: str, columns: Sequence[str], *, delimiter: str = ",", encoding: str = "utf-8", block_size: int = BLOCK_SIZE
) -> Iterator[tuple[int, tuple]]:
    """``(data row number, values)`` per record; values are strings aligned with ``columns``.

    Args:
      path: a CSV/TSV file with a header row.
      columns: the header names to read (checked first: an unknown one raises, naming the file's columns).
      delimiter: ``","`` for CSV, ``"\\t"`` for TSV.
      encoding: the file's text encoding (Python codec name).
      block_size: bytes per parsed block; memory stays proportional to it (grown when a record is longer).

    Raises:
      CorpusError: empty file, unknown column, malformed record or undecodable bytes (one line).
    """
    if os.path.getsize(path) == 0:
        raise CorpusError(f"{path}: empty file")
    names = _header(path, delimiter, encoding)
    missing = [c for c in columns if c not in names]
    if missing:
        raise CorpusError(
            f"{path}: unknown column(s) {', '.join(map(repr, missing))}; the file has columns {', '.join(map(repr, names))}"
        )
    wanted = list(dict.fromkeys(columns))
    number = 0
    while True:
        try:
            for values in _stream(path, columns, wanted, delimiter, encoding, block_size, skip=number):
                number += 1
                yield number, values
            break
        except pa.ArrowInvalid as e:
            if "straddling" in str(e) and block_size < MAX_BLOCK_SIZE:
                block_size *= 8  # one record is longer than a block: read on with larger blocks
                continue
            raise _explain(path, delimiter, encoding, e) from None
        except UnicodeDecodeError as e:
            raise _explain(path, delimiter, encoding, e) from None
    if number == 0:
        raise CorpusError(f"{path}: empty file (a header but no data rows)")


def _stream(path: str, columns: Sequence[str], wanted: list[str], delimiter: str, encoding: str, block_size: int,
            skip: int) -> Iterator[tuple]:
    """Value tuples of the records after the first ``skip`` ones."""
    reader = pa_csv.open_csv(
        path,
        read_options=pa_csv.ReadOptions(block_size=block_size, encoding=encoding),
        parse_options=pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(
            include_columns=wanted, column_types={c: pa.string() for c in wanted},
            strings_can_be_null=False, quoted_strings_can_be_null=False,
        ),
    )
    for batch in reader:
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        if skip:
            batch, skip = batch.slice(skip), 0
        cols = [batch.column(batch.schema.get_field_index(c)).to_pylist() for c in columns]
        yield from zip(*cols, strict=True)


def _explain(path: str, delimiter: str, encoding: str, error: Exception) -> CorpusError:
    """Finds where a CSV is broken and says it in one line."""
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    if "Empty CSV file" in message:
        return CorpusError(f"{path}: empty file")
    offset = _first_undecodable(path, encoding)
    if offset is not None:
        line = _line_of(path, offset)
        return CorpusError(
            f"{path}: line {line}, byte offset {offset}: bytes that are not valid {encoding}; "
            "pass the file's encoding (e.g. --encoding latin-1)"
        )
    where = _first_malformed(path, delimiter, encoding)
    if where is not None:
        record, line, offset, got, expected = where
        return CorpusError(
            f"{path}: row {record} (line {line}, byte offset {offset}) has {got} fields, the header has {expected}; "
            "quote fields that contain the delimiter or newlines"
        )
    return CorpusError(f"{path}: cannot be read as {'TSV' if delimiter == chr(9) else 'CSV'}: {message}")


def _first_undecodable(path: str, encoding: str) -> int | None:
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    offset = 0
    with open_binary(path) as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                return offset + e.start
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return offset
    return None


def _line_of(path: str, offset: int) -> int:
    line, done = 1, 0
    with open_binary(path) as f:
        while done < offset and (chunk := f.read(min(1 << 20, offset - done))):
            line += chunk.count(b"\n")
            done += len(chunk)
    return line


class _OffsetLines(io.TextIOBase):
    """Text lines of a binary file, remembering the byte offset where each line starts (for messages)."""

    def __init__(self, f, encoding: str):
        self._f, self._encoding, self.offsets = f, encoding, []
        self._offset = 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        raw = self._f.readline()
        if not raw:
            raise StopIteration
        self.offsets.append(self._offset)
        self._offset += len(raw)
        return raw.decode(self._encoding, errors="replace")


def _first_malformed(path: str, delimiter: str, encoding: str) -> tuple[int, int, int, int, int] | None:
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in {"utf-8", "utf8"} else encoding
    with open_binary(path) as f:
        lines = _OffsetLines(f, codec)
        reader = csv.reader(lines, delimiter=delimiter, strict=False)
        header = next(reader, None)
        if header is None:
            return None
        start_line, record = reader.line_num + 1, 0
        for fields in reader:
            if fields:  # pyarrow skips blank lines; so do row numbers
                record += 1
                if len(fields) != len(header):
                    return record, start_line, lines.offsets[start_line - 1], len(fields), len(header)
            start_line = reader.line_num + 1
    return None
