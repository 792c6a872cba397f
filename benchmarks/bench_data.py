"""Reader-side throughput and memory of corpus/ on a generated 1,000,000-row, ~1 GB CSV (issue 19, point 8).

    python benchmarks/bench_data.py [--csv /tmp/bertbc-big.csv] [--rows 1000000]

Generates the CSV with scripts/make_big_csv.py when it is missing (keep it in /tmp, never in the repo),
then runs each phase in a fresh subprocess so its peak RSS (``getrusage``) is its own:

* ``read``: ``corpus.iter_rows`` over title+body+label (pyarrow CSV in 1 MB blocks, a ``Row`` per record);
* ``hash-split``: ``corpus.split.iter_split`` with the default hash split (what an epoch reads);
* ``stratified-split``: the plan pass + iterative stratification for ``--test-split 0.1``, then one
  assigning pass (what a run with a test share does once);
* ``tracemalloc``: Python-heap peak of ``hash-split`` over the first 100,000 rows (shows nothing is kept).

* ``input``: the trainer's input pipeline alone: the corpus loaded for training (validation rows held, training
  rows streamed: ``load_own_corpus(stream_train=True)``), then ``make_stream_train_dataset`` with the default
  encoder's tokenizer (batch 32, 256 tokens, 100,000-row shuffle buffer) for ``--input-batches`` batches after the
  buffer has filled: tokenized rows/s;
* ``trainer``: the real trainer (``python -m trainer`` with the default model and flags, 1 epoch) in a subprocess
  whose RSS is sampled from /proc every 0.5 s: peak before the first step and during the epoch, and the step rate
  from its progress bar over ``--train-seconds``; then it is interrupted (Ctrl-C, which keeps a checkpoint) and
  its folders deleted. The input phase's rows/s over the steps' rows/s is the ratio issue 19 asks to be >= 20;
* ``trainer-small``: the same on 2,000 training / 500 validation rows of the same file (``--max-train-docs``,
  ``--max-val-docs``): the RSS the model itself costs, so the difference is what the corpus costs.

Prints rows/s and peak RSS per phase with the machine, and writes reports/bench-data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

COLUMNS = {"text_columns": ["title", "body"], "label_column": "label"}
PHASES = ("read", "hash-split", "stratified-split", "tracemalloc", "input", "trainer", "trainer-small")
# The reference run: the same trainer on 2,000 training / 500 validation rows of the same file. Its RSS is what the
# model costs (activations of a training step); the difference to "trainer" is what 10^6 rows cost.
SMALL = ("--max-train-docs", "2000", "--max-val-docs", "500")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _input_phase(csv_path: str, batches: int) -> dict:
    """The trainer's corpus and input pipeline, without a model: what the data side can deliver."""
    from trainer import encoders
    from trainer.config import TrainConfig
    from trainer.own_data import load_own_corpus
    from trainer.pipeline import make_stream_train_dataset
    from trainer.preprocessing import Preprocessor

    cfg = TrainConfig()  # the trainer's defaults: batch size, sequence length, shuffle buffer
    t0 = time.perf_counter()
    corpus = load_own_corpus(csv_path, **COLUMNS, stream_train=True)
    loaded = {"load_seconds": round(time.perf_counter() - t0, 1), "rss_after_load_mb": round(_peak_rss_mb()),
              "train_rows": corpus.num_train, "val_rows": len(corpus.val_texts)}
    spec = encoders.resolve_encoder(cfg.encoder, cache_dir=cfg.cache_dir)
    pre = Preprocessor(spec.preprocess_handle, seq_length=cfg.seq_length, truncation=cfg.truncation)
    ds = make_stream_train_dataset(corpus.train_stream, pre, rows=corpus.num_train,
                                   num_classes=len(corpus.class_names), multi_label=False, batch_size=cfg.batch_size,
                                   seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer)
    it = iter(ds)
    t1 = time.perf_counter()
    next(it)  # fills the shuffle buffer
    fill = time.perf_counter() - t1
    t2 = time.perf_counter()
    n = 0
    for _ in range(batches):
        features, _ = next(it)
        n += int(features["input_word_ids"].shape[0])
    seconds = time.perf_counter() - t2
    return {"rows": n, "seconds": round(seconds, 1), "rows_per_s": round(n / seconds),
            "buffer_fill_seconds": round(fill, 1), **loaded}


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def _trainer_phase(csv_path: str, train_seconds: float, extra: tuple[str, ...] = ()) -> dict:
    """The real trainer on the CSV: RSS before the first step and during the epoch, and its step rate."""
    out = Path(tempfile.mkdtemp(prefix="bertbc-bench-data-"))
    cmd = [sys.executable, "-m", "trainer", "--data", csv_path, "--text-column", "title", "--text-column", "body",
           "--label-column", "label", "--epochs", "1", "--logdir", str(out / "logs"), "--checkpoint-dir",
           str(out / "ckpt"), "--model-base-path", str(out / "models"), "--new-run", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    progress: list[tuple[float, int]] = []  # (time, steps done) as the progress bar shows them
    log_tail: list[str] = []

    def read_stderr():
        buf = b""
        while chunk := proc.stderr.read1(4096):
            buf += chunk
            *parts, buf = re.split(rb"[\r\n]", buf)
            for part in parts:
                line = part.decode("utf-8", "replace")
                log_tail.append(line)
                del log_tail[:-40]
                m = re.search(r"epoch 1/1:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)", line)
                if m:
                    progress.append((time.perf_counter(), int(m.group(1))))

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    before, during = 0.0, 0.0
    first_step_at = None
    try:
        while proc.poll() is None:
            rss = _rss_mb(proc.pid)
            if progress and progress[-1][1] >= 1:
                first_step_at = first_step_at or progress[-1][0]
                during = max(during, rss)
                if time.perf_counter() - first_step_at > train_seconds:
                    break
            else:
                before = max(before, rss)
            time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError("the trainer stopped early:\n" + "\n".join(log_tail))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # the trainer's Ctrl-C: keeps a checkpoint and exits
            try:
                proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                proc.kill()
        reader.join(timeout=10)
        shutil.rmtree(out, ignore_errors=True)
    counted = [(t, n) for t, n in progress if n >= 1]
    (t_a, n_a), (t_b, n_b) = counted[0], counted[-1]
    steps_per_s = (n_b - n_a) / (t_b - t_a) if t_b > t_a else float("nan")
    from trainer.config import TrainConfig

    batch = TrainConfig().batch_size
    return {"rows": (n_b - n_a) * batch, "seconds": round(t_b - t_a, 1), "batch_size": batch,
            "rows_per_s": round(steps_per_s * batch, 1), "steps_per_s": round(steps_per_s, 3),
            "seconds_to_first_step": round(first_step_at - t0, 1), "peak_rss_before_first_step_mb": round(before),
            "peak_rss_during_epoch_mb": round(during), "steps_timed": n_b - n_a}


def run_phase(phase: str, csv_path: str, input_batches: int = 300, train_seconds: float = 180) -> dict:
    """Runs one phase in this process; returns rows, seconds, rows/s, peak RSS (MB)."""
    from corpus.readers import iter_rows
    from corpus.rows import Row
    from corpus.split import SplitSpec, StratifiedSplit, iter_split

    if phase == "input":
        return {"phase": phase, **_input_phase(csv_path, input_batches), "peak_rss_mb": round(_peak_rss_mb())}
    if phase in ("trainer", "trainer-small"):
        result = _trainer_phase(csv_path, train_seconds, SMALL if phase == "trainer-small" else ())
        return {"phase": phase, **result, "peak_rss_mb": max(result["peak_rss_before_first_step_mb"],
                                                              result["peak_rss_during_epoch_mb"])}
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
    p.add_argument("--input-batches", type=int, default=300, help="batches the input phase times (after the "
                   "shuffle buffer has filled)")
    p.add_argument("--train-seconds", type=float, default=180, help="how long the trainer phase trains after its "
                   "first step before it is interrupted")
    p.add_argument("--out", default=str(REPO / "reports" / "bench-data.json"))
    p.add_argument("--phase", help=argparse.SUPPRESS)  # internal: run one phase, print JSON
    args = p.parse_args()
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.csv, args.input_batches, args.train_seconds)))
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
        out = subprocess.run([sys.executable, __file__, "--csv", args.csv, "--phase", phase, "--input-batches",
                              str(args.input_batches), "--train-seconds", str(args.train_seconds)],
                             check=True, capture_output=True, text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(result)
        print(f"{phase:<17} {result['rows']:>9} rows {result['seconds']:>7.1f} s {result['rows_per_s']:>9} rows/s "
              f"peak RSS {result['peak_rss_mb']:>5} MB "
              + " ".join(f"{k}={v}" for k, v in result.items()
                         if k not in {"phase", "rows", "seconds", "rows_per_s", "peak_rss_mb"}))
    by_phase = {r["phase"]: r for r in results}
    if {"input", "trainer"} <= by_phase.keys():
        ratio = by_phase["input"]["rows_per_s"] / by_phase["trainer"]["rows_per_s"]
        print(f"input pipeline / training step consumption: {ratio:.0f}x (issue 19 asks >= 20x); trainer peak RSS "
              f"{by_phase['trainer']['peak_rss_mb']} MB (asks < 4096)")
    if {"trainer", "trainer-small"} <= by_phase.keys():
        print(f"what the corpus costs: trainer peak RSS {by_phase['trainer']['peak_rss_mb']} MB on every row vs "
              f"{by_phase['trainer-small']['peak_rss_mb']} MB on 2,000 + 500 rows of the same file")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine_line(), "csv": args.csv, "gb": round(size_gb, 2),
                                          "results": results}, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
