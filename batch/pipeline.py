"""The Beam job graph: files -> rows -> RunInference -> predictions, with every unscored row dead-lettered.

    Create(work items) -> Reshuffle -> ParDo(ReadRows) --rows--> Reshuffle -> RunInference(keyed)
                                         |                                     |-- ok --> predictions-*
                                         +--dead (BadRow, file error)--+       +-- failed batch --+
                                                                       +--> dead_letter-* <-------+

A work item is one input file (or one document of a class-folder corpus), so files are read in parallel by
the workers and an archive streams through ``corpus.iter_rows`` file by file, never held whole. The two
Reshuffles let the runner spread files, then rows, over the workers (a single large file is not scored by
one worker alone).

Counters (namespace ``bertbc.batch``): ``rows_read`` = every row or unreadable record seen,
``rows_scored``, ``rows_dead_lettered``; a finished job reconciles read = scored + dead-lettered. The
distribution ``scored_at_ms`` (min/max over all workers) dates the first and last scored row, so throughput can
be read without the pipeline's start-up (benchmarks/bench_batch.py).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from batch.handler import SavedModelSignatureHandler
from batch.models import ModelRef
from batch.outputs import (
    DEAD_LETTER,
    PREDICTIONS,
    dead_letter_record,
    parquet_schema,
    prediction_record,
    to_json,
)

NAMESPACE = "bertbc.batch"
READ, SCORED, DEAD = "rows_read", "rows_scored", "rows_dead_lettered"
SCORED_AT = "scored_at_ms"  # distribution of wall-clock times rows were scored: min/max = first/last
DEAD_TAG = "dead"
log = logging.getLogger("bertbc.batch")


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """Everything the graph needs besides the Beam pipeline options (validated by batch.cli).

    Attributes:
      model: the resolved version (path, number, class names).
      inputs: files, folders or globs as the user typed them (``corpus.expand_paths`` rules).
      output: the output folder.
      text_columns: columns joined into the text (CSV/TSV/JSONL/Parquet); ignored for class folders.
      id_column: column with a stable row id; default ``"<path>:<row>"`` (the path for class folders).
      encoding / file_format: passed to ``corpus.iter_rows``.
      output_format: ``jsonl`` or ``parquet``.
      min_batch_size / max_batch_size: Beam's BatchElements bounds for RunInference.
      large_model: one model per machine shared across processes (Beam ``large_model``).
      log_every: a progress log line per this many scored rows (per worker process).
    """

    model: ModelRef
    inputs: tuple[str, ...]
    output: str
    text_columns: tuple[str, ...] = ("text",)
    id_column: str | None = None
    encoding: str = "utf-8"
    file_format: str | None = None
    output_format: str = "jsonl"
    min_batch_size: int = 8
    max_batch_size: int = 64
    large_model: bool = False
    log_every: int = 1000


def work_items(cfg: JobConfig) -> list[tuple[str, str | None]]:
    """``(file, class label or None)`` per unit of reading work, checked before the job starts.

    Raises:
      corpus.CorpusError: nothing matches, or a file has an unknown format (one line).
    """
    from corpus.paths import class_root, detect_format, expand_paths, folder_documents  # noqa: PLC0415

    if len(cfg.inputs) == 1 and (root := class_root(cfg.inputs[0])) is not None:
        expand_paths(list(cfg.inputs))  # raises when the class folders hold no documents
        return list(folder_documents(root))
    files = expand_paths(list(cfg.inputs))
    for path in files:
        detect_format(path, cfg.file_format)
    return [(path, None) for path in files]


class ReadRows(beam.DoFn):
    """One work item -> ``((row id, source), text)`` per row; unreadable rows and files to the DEAD_TAG output.

    A file-level error (bad encoding, malformed CSV, unknown column) dead-letters the file itself, with id =
    the file path, after the rows read before the error; the job goes on with the other files.
    """

    def __init__(self, text_columns, id_column, encoding, file_format):
        self.text_columns, self.id_column = tuple(text_columns), id_column
        self.encoding, self.file_format = encoding, file_format
        self.read = Metrics.counter(NAMESPACE, READ)

    def process(self, item):
        from corpus import BadRow, CorpusError, iter_rows  # noqa: PLC0415
        from corpus.folder_reader import read_document  # noqa: PLC0415

        path, label = item
        try:
            rows = [read_document(path, label, self.encoding)] if label is not None else iter_rows(
                [path], text_columns=self.text_columns, id_column=self.id_column, encoding=self.encoding,
                file_format=self.file_format)
            for row in rows:
                self.read.inc()
                if isinstance(row, BadRow):
                    yield pvalue.TaggedOutput(DEAD_TAG, dead_letter_record(row.id, row.source, "read", row.reason))
                else:
                    yield (row.id, row.source), row.text
        except (CorpusError, OSError, UnicodeError) as e:
            self.read.inc()
            yield pvalue.TaggedOutput(DEAD_TAG, dead_letter_record(
                path, path, "read", f"file not (fully) read: {type(e).__name__}: {e}"))


class FormatPrediction(beam.DoFn):
    """``((id, source), PredictionResult)`` -> an output record; counts and logs progress."""

    def __init__(self, version: int, class_names: tuple[str, ...], log_every: int):
        self.version, self.class_names, self.log_every = version, tuple(class_names), log_every
        self.scored = Metrics.counter(NAMESPACE, SCORED)
        self.scored_at = Metrics.distribution(NAMESPACE, SCORED_AT)

    def setup(self):
        self.count, self.started = 0, time.perf_counter()

    def process(self, keyed):
        (row_id, source), result = keyed
        self.scored.inc()
        self.scored_at.update(int(time.time() * 1000))
        self.count += 1
        if self.log_every and self.count % self.log_every == 0:
            elapsed = time.perf_counter() - self.started
            log.info("scored %d rows in this worker (%.1f rows/s)", self.count, self.count / max(elapsed, 1e-9))
        yield prediction_record(row_id, source, self.version, self.class_names, result.inference)


def failed_batch_records(failed) -> list[dict]:
    """RunInference's ``(failed batch, exception)`` -> one dead-letter record per row of the batch."""
    batch, error = failed
    reason = f"inference failed: {type(error).__name__}: {error}".splitlines()[0][:500]
    return [dead_letter_record(row_id, source, "inference", reason) for (row_id, source), _ in batch]


class CountDead(beam.DoFn):
    def __init__(self):
        self.dead = Metrics.counter(NAMESPACE, DEAD)

    def process(self, record):
        self.dead.inc()
        yield record


def model_handler(cfg: JobConfig) -> KeyedModelHandler:
    """RunInference's handler: keyed by ``(row id, source)``, Beam's batching, one model per process."""
    return KeyedModelHandler(SavedModelSignatureHandler(
        cfg.model.path, min_batch_size=cfg.min_batch_size, max_batch_size=cfg.max_batch_size,
        large_model=cfg.large_model))


def build(pipeline: beam.Pipeline, cfg: JobConfig, items: list[tuple[str, str | None]]) -> None:
    """Applies the whole job to ``pipeline`` (nothing runs until ``pipeline.run()``)."""
    from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415

    read = (pipeline
            | "Files" >> beam.Create(items)
            | "SpreadFiles" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(ReadRows(cfg.text_columns, cfg.id_column, cfg.encoding, cfg.file_format))
            .with_outputs(DEAD_TAG, main="rows"))
    scored, failed = (read.rows
                      | "SpreadRows" >> beam.Reshuffle()
                      | "RunInference" >> RunInference(model_handler(cfg)).with_exception_handling())
    records = scored | "Format" >> beam.ParDo(FormatPrediction(cfg.model.version, cfg.model.class_names,
                                                               cfg.log_every))
    prefix = FileSystems.join(cfg.output, PREDICTIONS)
    if cfg.output_format == "parquet":
        _ = records | "WritePredictions" >> beam.io.WriteToParquet(
            prefix, parquet_schema(cfg.model.class_names, cfg.model.multi_label), file_name_suffix=".parquet")
    else:
        _ = (records | "PredictionsJson" >> beam.Map(to_json)
             | "WritePredictions" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl"))
    failed_rows = failed.failed_inferences | "FailedBatches" >> beam.FlatMap(failed_batch_records)
    _ = ((read[DEAD_TAG], failed_rows)
         | "AllDead" >> beam.Flatten()
         | "CountDead" >> beam.ParDo(CountDead())
         | "DeadJson" >> beam.Map(to_json)
         | "WriteDeadLetter" >> beam.io.WriteToText(FileSystems.join(cfg.output, DEAD_LETTER),
                                                    file_name_suffix=".jsonl"))
