"""bertbc's corpus package: read anyone's labelled text (class folders, CSV/TSV, JSON lines, Parquet),
split it deterministically, check its label set and report on it, streaming, without TensorFlow.

Imported by the trainer (which wraps ``iter_rows`` in ``tf.data``) and the batch-scoring job; it imports
neither of them. See docs/own-data.md.
"""

from corpus.paths import expand_paths
from corpus.readers import iter_rows
from corpus.rows import BadRow, CorpusError, Row

__all__ = ["BadRow", "CorpusError", "Row", "expand_paths", "iter_rows"]
