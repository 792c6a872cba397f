"""Parquet records, streamed a row group slice at a time with ``pyarrow.parquet.ParquetFile.iter_batches``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from corpus.rows import CorpusError

BATCH_ROWS = 8192


def iter_records(path: str, columns: Sequence[str], *, batch_rows: int = BATCH_ROWS) -> Iterator[tuple[int, tuple]]:
    """``(row number, values)`` per row; values keep their Arrow types as Python objects (lists stay lists).

    Raises:
      CorpusError: not a Parquet file, unknown column (the file's columns are named), or no rows.
    """
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise CorpusError(f"{path}: cannot be read as Parquet: {str(e).splitlines()[0]}") from None
    names = list(pf.schema_arrow.names)
    missing = [c for c in columns if c not in names]
    if missing:
        raise CorpusError(
            f"{path}: unknown column(s) {', '.join(map(repr, missing))}; the file has columns {', '.join(map(repr, names))}"
        )
    if pf.metadata.num_rows == 0:
        raise CorpusError(f"{path}: empty file (no rows)")
    wanted = list(dict.fromkeys(columns))
    number = 0
    try:
        for batch in pf.iter_batches(batch_size=batch_rows, columns=wanted):
            cols = [batch.column(batch.schema.get_field_index(c)).to_pylist() for c in columns]
            for values in zip(*cols, strict=True):
                number += 1
                yield number, values
    except (pa.ArrowInvalid, OSError) as e:
        raise CorpusError(f"{path}: row {number + 1}: cannot be read: {str(e).splitlines()[0]}") from None
