"""``python -m batch``: score an archive with the newest exported version and write predictions + dead letters.

    python -m batch --model models/bertbc --input 'archive/*.jsonl' --output out/ \
        [--text-column title --text-column body] [--id-column id] [--output-format parquet] \
        [--min-batch-size 8 --max-batch-size 64] [--overwrite] [Beam pipeline options, e.g. --runner ...]

Flags it does not know are Beam pipeline options (``--runner``, ``--direct_num_workers``, ``--project`` ...).
Exit status: 0 when every row read was either scored or dead-lettered, 1 when the counters do not reconcile
or the job failed, 2 for a bad argument (one line, no traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from batch.outputs import FORMATS, SUMMARY

log = logging.getLogger("bertbc.batch")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Our flags, and the rest for Beam's PipelineOptions."""
    p = argparse.ArgumentParser(prog="python -m batch", description=__doc__.splitlines()[0],
                                epilog="Any other --flag is a Beam pipeline option (see batch/README.md).")
    p.add_argument("--model", required=True, help="base path (newest numeric version) or a version folder")
    p.add_argument("--input", required=True, action="append",
                   help="file, folder or glob (quote it); repeat for several")
    p.add_argument("--output", required=True, help="output folder (refused if it holds a previous run)")
    p.add_argument("--text-column", action="append", dest="text_columns",
                   help="column(s) joined into the text, in order (default: text); repeatable")
    p.add_argument("--id-column", help="column with a stable row id (default: <path>:<row>)")
    p.add_argument("--encoding", default="utf-8", help="text encoding of CSV/TSV/JSON files")
    p.add_argument("--file-format", choices=("csv", "tsv", "jsonl", "parquet"),
                   help="format of every input file, instead of their extensions")
    p.add_argument("--output-format", choices=FORMATS, default="jsonl")
    p.add_argument("--min-batch-size", type=int, default=8, help="RunInference's smallest batch (default 8)")
    p.add_argument("--max-batch-size", type=int, default=64, help="RunInference's largest batch (default 64)")
    p.add_argument("--large-model", action="store_true",
                   help="one model per machine shared by its worker processes (default: one per process)")
    p.add_argument("--log-every", type=int, default=1000, help="a progress line per N scored rows per worker")
    p.add_argument("--overwrite", action="store_true", help="replace a previous run's results in --output")
    args, beam_args = p.parse_known_args(argv)
    if args.min_batch_size < 1 or args.max_batch_size < args.min_batch_size:
        p.error(f"need 1 <= --min-batch-size ({args.min_batch_size}) <= --max-batch-size ({args.max_batch_size})")
    if args.log_every < 0:
        p.error(f"--log-every must be >= 0, got {args.log_every}")
    return args, beam_args


def job_config(args: argparse.Namespace):
    """Resolves the model and builds the JobConfig (raises ModelError for a bad --model)."""
    from batch.models import resolve_model  # noqa: PLC0415
    from batch.pipeline import JobConfig  # noqa: PLC0415

    model = resolve_model(args.model)
    return JobConfig(model=model, inputs=tuple(args.input), output=args.output,
                     text_columns=tuple(args.text_columns or ("text",)), id_column=args.id_column,
                     encoding=args.encoding, file_format=args.file_format, output_format=args.output_format,
                     min_batch_size=args.min_batch_size, max_batch_size=args.max_batch_size,
                     large_model=args.large_model, log_every=args.log_every)


def preflight(cfg, items) -> None:
    """Reads the first record of the first file so a wrong column or format fails now, not in every worker."""
    from corpus import iter_rows  # noqa: PLC0415

    path, label = items[0]
    if label is None:
        next(iter(iter_rows([path], text_columns=cfg.text_columns, id_column=cfg.id_column,
                            encoding=cfg.encoding, file_format=cfg.file_format)), None)


def read_counters(result) -> dict[str, int]:
    """The job's bertbc.batch counters (committed values where the runner has them)."""
    from apache_beam.metrics.metric import MetricsFilter  # noqa: PLC0415

    from batch.pipeline import DEAD, NAMESPACE, READ, SCORED, SCORED_AT  # noqa: PLC0415

    counts = {READ: 0, SCORED: 0, DEAD: 0}
    found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    for c in found["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        counts[c.key.metric.name] = counts.get(c.key.metric.name, 0) + int(value or 0)
    for d in found["distributions"]:
        value = d.committed if d.committed is not None else d.attempted
        if d.key.metric.name == SCORED_AT and value is not None and value.count:
            counts["first_scored_at"], counts["last_scored_at"] = value.min / 1000, value.max / 1000
    return counts


def run(args: argparse.Namespace, beam_args: list[str]) -> int:
    import apache_beam as beam  # noqa: PLC0415
    from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions  # noqa: PLC0415

    from batch import pipeline as job  # noqa: PLC0415
    from batch.outputs import prepare_output  # noqa: PLC0415

    started, started_at = time.perf_counter(), time.time()
    cfg = job_config(args)
    log.info("model %s: version %d, classes %s", cfg.model.path, cfg.model.version, ", ".join(cfg.model.class_names))
    items = job.work_items(cfg)
    preflight(cfg, items)
    prepare_output(cfg.output, overwrite=args.overwrite)
    options = PipelineOptions(beam_args)
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    log.info("scoring %d input item(s) with %s into %s (%s)", len(items), runner, cfg.output, cfg.output_format)
    pipeline = beam.Pipeline(options=options)
    job.build(pipeline, cfg, items)
    result = pipeline.run()
    state = result.wait_until_finish()
    counts = read_counters(result)
    seconds = time.perf_counter() - started
    reconciled = counts[job.READ] == counts[job.SCORED] + counts[job.DEAD]
    summary = {"model": cfg.model.path, "model_version": cfg.model.version, "runner": runner, "state": str(state),
               "inputs": list(cfg.inputs), "items": len(items), **counts, "reconciled": reconciled,
               "started_at": started_at, "seconds": round(seconds, 1)}
    with FileSystems.create(FileSystems.join(cfg.output, SUMMARY)) as f:
        f.write(json.dumps(summary, indent=2).encode("utf-8"))
    print(f"batch: {state}: read {counts[job.READ]} = scored {counts[job.SCORED]} + dead-lettered "
          f"{counts[job.DEAD]} ({'reconciled' if reconciled else 'DOES NOT RECONCILE'}) with model version "
          f"{cfg.model.version} in {seconds:.1f} s; results in {cfg.output}", file=sys.stderr)
    return 0 if reconciled and str(state).endswith("DONE") else 1


def configure_logging() -> None:
    """INFO lines with times for the command line (Beam's own INFO chatter stays at WARNING)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
    for noisy in ("apache_beam", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    from batch.models import ModelError  # noqa: PLC0415
    from batch.outputs import OutputError  # noqa: PLC0415
    from corpus import CorpusError  # noqa: PLC0415

    args, beam_args = parse_args(argv)
    try:
        return run(args, beam_args)
    except (ModelError, OutputError, CorpusError) as e:
        print(f"batch: error: {e}", file=sys.stderr)
        return 2
