"""Reader-side throughput and memory of corpus/ on a generated 1,000,000-row, ~1 GB CSV (issue 19, point 8).

    python benchmarks/bench_data.py [--csv /tmp/bertbc-big.csv] [--rows 1000000]

Generates the CSV with scripts/make_big_csv.py when it is missing (keep it in /tmp, never in the repo),
then runs each phase in a fresh subprocess so its peak RSS (``getrusage``) is its own:

* ``read``: ``corpus.iter_rows`` over title+body+label (pyarrow CSV in 1 MB blocks, a ``Row`` per record);
* ``hash-split``: ``corpus.split.iter_split`` with the default hash split (what an epoch reads);
* ``stratified-split``: the plan pass + iterative stratification for ``--test-split 0.1``, then one
  assigning pass (what a run with a test share does once);
* ``tracemalloc``: Python-heap peak of ``hash-split`` over the first 100,000 rows (shows nothing is kept).

Prints rows/s and peak RSS per phase with the machine, and writes reports/bench-data.json. The trainer's
part (steps/s it consumes, RSS during an epoch) is added by the trainer's own benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

COLUMNS = {"text_columns": ["title", "body"], "label_column": "label"}
PHASES = ("read", "hash-split", "stratified-split", "tracemalloc")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_phase(phase: str, csv_path: str) -> dict:
    """Runs one phase in this process; returns rows, seconds, rows/s, peak RSS (MB)."""
    from corpus.readers import iter_rows
    from corpus.rows import Row
    from corpus.split import SplitSpec, StratifiedSplit, iter_split

    rss_start = _peak_rss_mb()
    t0 = time.perf_counter()
    extra: dict = {}
    n = 0
    if phase == "read":
        for row in iter_rows(csv_path, **COLUMNS):
            n += isinstance(row, Row)
    elif phase == "hash-split":
        counts: dict[str, int] = {}
        for split, _ in iter_split(csv_path, SplitSpec(0.1, 0.0, 42), **COLUMNS):
            counts[split] = counts.get(split, 0) + 1
        n = sum(counts.values())
        extra["splits"] = counts
    elif phase == "stratified-split":
        spec = SplitSpec(0.1, 0.1, 42)
        splitter = StratifiedSplit.fit(iter_rows(csv_path, **COLUMNS), spec)
        extra["plan_seconds"] = round(time.perf_counter() - t0, 1)
        counts = {}
        for split, _ in iter_split(csv_path, spec, splitter=splitter, **COLUMNS):
            counts[split] = counts.get(split, 0) + 1
        n = sum(counts.values())
        extra["splits"] = counts
    elif phase == "tracemalloc":
        import itertools
        import tracemalloc

        tracemalloc.start()
        for _ in itertools.islice(iter_split(csv_path, SplitSpec(0.1, 0.0, 42), **COLUMNS), 100_000):
            n += 1
        extra["python_heap_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
        tracemalloc.stop()
    seconds = time.perf_counter() - t0
    return {"phase": phase, "rows": n, "seconds": round(seconds, 1), "rows_per_s": round(n / seconds),
            "peak_rss_mb": round(_peak_rss_mb()), "rss_at_start_mb": round(rss_start), **extra}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", default="/tmp/bertbc-big.csv")
    p.add_argument("--rows", type=int, default=1_000_000, help="rows to generate when --csv is missing")
    p.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    p.add_argument("--out", default=str(REPO / "reports" / "bench-data.json"))
    p.add_argument("--phase", help=argparse.SUPPRESS)  # internal: run one phase, print JSON
    args = p.parse_args()
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.csv)))
        return
    from machine import machine_line

    if not os.path.exists(args.csv):
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_big_csv.py"), args.csv, "--rows",
                        str(args.rows)], check=True)
    size_gb = os.path.getsize(args.csv) / 1e9
    print(machine_line())
    print(f"corpus: {args.csv} ({size_gb:.2f} GB)")
    results = []
    for phase in args.phases:
        out = subprocess.run([sys.executable, __file__, "--csv", args.csv, "--phase", phase],
                             check=True, capture_output=True, text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(result)
        print(f"{phase:<17} {result['rows']:>9} rows {result['seconds']:>7.1f} s {result['rows_per_s']:>9} rows/s "
              f"peak RSS {result['peak_rss_mb']:>5} MB "
              + " ".join(f"{k}={v}" for k, v in result.items()
                         if k not in {"phase", "rows", "seconds", "rows_per_s", "peak_rss_mb"}))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine_line(), "csv": args.csv, "gb": round(size_gb, 2),
                                          "results": results}, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
