"""Serving benchmark: REST throughput/latency at several concurrency levels + the preprocessing share.

1. Starts the dev server (``python -m serving``) on 127.0.0.1 (free port) for an exported model base path,
   runs the project's Locust load test headless at 1, 4 and 16 users (closed loop, no think time) for a
   fixed time each, and reads Locust's own CSV: requests/s, texts/s, p50/p95/p99, failures.
2. Stops the server, loads the newest SavedModel version in-process and times, interleaved, the full
   ``serving_default`` signature on one text vs. its two halves: the in-graph ``preprocessor`` (strings ->
   token ids) and the classifier fed those pre-tokenized ids. Reports medians and the preprocessing share
   of a single request's model time (HTTP/JSON overhead excluded).
3. Length buckets x precision, in-process and interleaved in one run: a short headline (<= 32 word pieces), a
   medium text, a text filling exactly one window and a whole long article (read in up to the export's
   ``--serve-windows`` windows) through ``serving_default`` of the fp32 export and, if given, of the
   bf16 export (``--bf16-model-base-path``; make one with ``python -m trainer --export-only
   --export-precision bf16 --model-base-path models/bertbc-bf16``), plus batches of 16 one-window texts
   (texts/s). Prints medians, the long/short ratio per precision, bf16's speed-up, and the CPU's name and
   bf16 features (/proc/cpuinfo), so the README table can be pasted from one run.
4. The fixed cost of one pass, in-process and interleaved: the export's ``classify_features`` (encoder +
   head, no tokenizer) on one text of 2, 32 and 256 tokens, as exported and compiled with XLA
   (``jit_compile``; TF Serving runs XLA on CPU only with its experimental ``--xla_cpu_compilation_enabled``).
   A 2-token pass carries no text at all: what it costs is paid by every request however short, so the
   256/2 ratio is the most any short text can save against a full window in that runtime.

Usage::

    .venv/bin/python benchmarks/bench_serving.py [models/bertbc] [--bf16-model-base-path models/bertbc-bf16]
        [--seconds 20] [--users 1,4,16] [--runs 50] [--skip-load] [--skip-share] [--skip-lengths]
        [--skip-floor]

On a 2-core machine Locust and the server share the cores; numbers compare configurations on the same
host, they are not capacity figures for a production host.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass

from machine import cpu_description  # benchmarks/machine.py (scripts run with benchmarks/ on sys.path)

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
BUILTIN_TEXTS = ROOT / "loadtest" / "texts"
MODEL_NAME = "bertbc"
INPUT_NAMES = ("input_word_ids", "input_mask", "input_type_ids")


@dataclass(frozen=True)
class LoadResult:
    """One Locust run's aggregate numbers (response times in ms, from Locust's CSV)."""

    users: int
    requests: int
    failures: int
    req_per_s: float
    texts_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


@dataclass(frozen=True)
class PreprocessShare:
    """Medians over ``runs`` interleaved calls on one text (ms) and the preprocessing share of the full call."""

    runs: int
    text_chars: int
    full_ms: float
    preprocess_ms: float
    classifier_ms: float
    preprocess_share: float


def latest_version(base_path: pathlib.Path) -> pathlib.Path:
    """The highest ``<base>/<int>`` folder holding a saved_model.pb (TF Serving's rule for versions)."""
    versions = [p for p in base_path.iterdir() if p.name.isdigit() and (p / "saved_model.pb").is_file()] \
        if base_path.is_dir() else []
    if not versions:
        raise SystemExit(f"model_base_path: no <N>/saved_model.pb under {str(base_path)!r}; export a model first "
                         "(python -m trainer ... --model-base-path models/bertbc)")
    return max(versions, key=lambda p: int(p.name))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_available(url: str, proc: subprocess.Popen, timeout_s: float = 300.0) -> None:
    """Polls ``GET /v1/models/bertbc`` until a version is AVAILABLE; fails early if the server died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"dev server exited with code {proc.returncode} before the model became available")
        try:
            with urllib.request.urlopen(f"{url}/v1/models/{MODEL_NAME}", timeout=2) as resp:
                states = [v["state"] for v in json.load(resp).get("model_version_status", [])]
                if "AVAILABLE" in states:
                    return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"model not AVAILABLE at {url} after {timeout_s:.0f}s")


def read_locust_csv(prefix: pathlib.Path, users: int, batch_size: int) -> LoadResult:
    """Parses ``<prefix>_stats.csv``: the Aggregated row, plus texts/s from the per-task rows."""
    with open(f"{prefix}_stats.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    total = next(r for r in rows if r["Name"] == "Aggregated")
    texts_per_s = sum(float(r["Requests/s"]) * (batch_size if "batch" in r["Name"] else 1)
                      for r in rows if r["Name"] != "Aggregated")
    return LoadResult(
        users=users,
        requests=int(total["Request Count"]),
        failures=int(total["Failure Count"]),
        req_per_s=float(total["Requests/s"]),
        texts_per_s=texts_per_s,
        p50_ms=float(total["50%"] or 0),
        p95_ms=float(total["95%"] or 0),
        p99_ms=float(total["99%"] or 0),
    )


def run_load(base_path: pathlib.Path, users: list[int], seconds: int, batch_size: int, texts_dir: str,
             workdir: pathlib.Path) -> list[LoadResult]:
    """Starts the dev server, runs one headless Locust per user count, stops the server."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(
        [sys.executable, "-m", "serving", f"--rest_api_port={port}", "--rest_api_host=127.0.0.1",
         f"--model_name={MODEL_NAME}", f"--model_base_path={base_path.resolve()}"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    results = []
    try:
        wait_available(url, server)
        locust = pathlib.Path(sys.executable).with_name("locust")
        locust_env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
        for n in users:
            prefix = workdir / f"users{n}"
            cmd = [str(locust), "-f", str(LOCUSTFILE), "--headless", "-u", str(n), "-r", str(n),
                   "-t", f"{seconds}s", "--host", url, "--csv", str(prefix), "--only-summary",
                   "--stop-timeout", "10", "--think-time-ms", "0", "--batch-size", str(batch_size),
                   "--max-fail-ratio", "1", "--max-p95-ms", "1e12", "--max-p99-ms", "1e12"]
            if texts_dir:
                cmd += ["--texts-dir", str(pathlib.Path(texts_dir).resolve())]  # Locust runs in workdir
            print(f"locust: {n} users for {seconds}s ...", file=sys.stderr, flush=True)
            done = subprocess.run(cmd, cwd=workdir, env=locust_env, capture_output=True, text=True,
                                  timeout=seconds + 120, check=False)
            if not pathlib.Path(f"{prefix}_stats.csv").exists():
                raise SystemExit(f"locust wrote no statistics (exit {done.returncode}):\n{done.stderr[-3000:]}")
            results.append(read_locust_csv(prefix, n, batch_size))
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    return results


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000.0


def measure_preprocess_share(loaded, version_dir: pathlib.Path, text: str, runs: int) -> PreprocessShare | None:
    """Times full signature vs. preprocessor vs. classifier-on-ids, interleaved so drift hits all three.

    Expects the exported module's attributes ``preprocessor`` (strings [B] -> dict of int32 [B, S]) and
    ``classify_features(input_word_ids, input_mask, input_type_ids)`` -> logits [B, C] (falls back to
    ``classifier(dict)``). Returns None when the SavedModel (``loaded``, from ``version_dir``) exposes neither.
    """
    import tensorflow as tf

    full = loaded.signatures["serving_default"]
    if not hasattr(loaded, "preprocessor"):
        print(f"{version_dir}: no `preprocessor` attribute; skipping the preprocessing share", file=sys.stderr)
        return None
    if hasattr(loaded, "classify_features"):
        def classify(features):
            return loaded.classify_features(*(features[name] for name in INPUT_NAMES))
    elif hasattr(loaded, "classifier"):
        def classify(features):
            return loaded.classifier(features, training=False)
    else:
        print(f"{version_dir}: no `classify_features`/`classifier` attribute; skipping", file=sys.stderr)
        return None

    texts = tf.constant([text])
    # What serve() runs: length-bucketed packing when the export has it (older exports pack to full length).
    preprocess = getattr(loaded.preprocessor, "bucketed", loaded.preprocessor)
    features = preprocess(texts)
    calls = {
        "full": lambda: full(text=texts),
        "preprocess": lambda: preprocess(texts),
        "classifier": lambda: classify(features),
    }
    timings = interleaved_timings(calls, runs)
    full_ms, pre_ms, cls_ms = (_median_ms(timings[k]) for k in ("full", "preprocess", "classifier"))
    return PreprocessShare(runs=runs, text_chars=len(text), full_ms=full_ms, preprocess_ms=pre_ms,
                           classifier_ms=cls_ms, preprocess_share=pre_ms / full_ms if full_ms else 0.0)


def interleaved_timings(calls: dict, runs: int, warmup: int = 3) -> dict:
    """Seconds per call for each named call, timed round-robin (so load drift hits all alike) after a warm-up."""
    for _ in range(warmup):  # tracing, first-run allocations
        for call in calls.values():
            _block(call())
    timings = {key: [] for key in calls}
    for _ in range(runs):
        for key, call in calls.items():
            start = time.perf_counter()
            _block(call())
            timings[key].append(time.perf_counter() - start)
    return timings


SHORT_TEXT = "Shares in BP rose 3%."  # the headline: 8 word pieces
MEDIUM_WORDS = 60  # the long article's first 60 words: 64 < word pieces + 2 <= 128 on BBC-like text
BATCH = 16


@dataclass(frozen=True)
class LengthRow:
    """Median ms of one ``serving_default`` call per precision for one text (or one batch of ``texts``)."""

    name: str
    texts: int
    word_pieces: int  # of the longest text, without [CLS]/[SEP]
    packed_length: int  # what the serving graph packed it to (from the export's preprocessor.bucketed)
    ms: dict  # precision -> median ms per call


def length_texts(texts_dir: str, preprocessor) -> dict[str, list[str]]:
    """The texts of the length table, cut from the request texts (all joined into one long article):

    short        the issue's headline (<= 32 word pieces: the smallest bucket)
    medium       the article's first 60 words (a 128 bucket)
    one window   as many leading words as fit one window of the trained length (the most a head-only model
                 reads, and what one window costs)
    whole        the whole joined article: the export reads it in up to --serve-windows windows
    batches      16 headlines, and 16 one-window texts, in one request (what server-side batching merges)
    """
    import tensorflow as tf

    root = pathlib.Path(texts_dir) if texts_dir else BUILTIN_TEXTS
    long = " ".join(p.read_bytes().decode("utf-8", errors="replace").strip() for p in sorted(root.rglob("*.txt")))
    words = long.split()
    full = int(preprocessor(tf.constant([""]))["input_mask"].shape[1])

    def fits(n: int) -> bool:  # [CLS] + word pieces + [SEP] shorter than the trained length: nothing cut
        return int(tf.reduce_sum(preprocessor(tf.constant([" ".join(words[:n])]))["input_mask"])) < full

    low, high = 1, len(words)  # the largest n that fits (word pieces grow with n)
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    window = " ".join(words[:low])
    medium = " ".join(words[:MEDIUM_WORDS])
    return {"short": [SHORT_TEXT], "medium": [medium], "one window": [window], "whole article": [long],
            f"short x{BATCH}": [SHORT_TEXT] * BATCH, f"one window x{BATCH}": [window] * BATCH}


FLOOR_TOKENS = (2, 32, 256)  # no text ([CLS] [SEP]), the smallest bucket, one full window


@dataclass(frozen=True)
class FloorRow:
    """Median ms of one ``classify_features`` call on one text of ``tokens`` tokens, per runtime."""

    tokens: int
    ms: dict  # runtime -> median ms: "graph" (the exported graph, as TF Serving runs it), "XLA" (jit_compile)


def measure_floor(model, window: str, runs: int) -> list[FloorRow]:
    """Times the loaded export's encoder + head on 2 / 32 / 256 tokens of real text, graph and XLA, interleaved.

    The token ids are the first tokens of ``window`` (a text filling one window; mask all ones), so only the
    length differs.
    """
    import tensorflow as tf

    full = model.preprocessor(tf.constant([window]))
    if int(full["input_word_ids"].shape[1]) < max(FLOOR_TOKENS):
        raise SystemExit(f"trained length {full['input_word_ids'].shape[1]} < {max(FLOOR_TOKENS)}: no floor table")
    runtimes = {"graph": model.classify_features,
                "XLA": tf.function(lambda *features: model.classify_features(*features), jit_compile=True)}
    calls = {}
    for tokens in FLOOR_TOKENS:
        features = [full["input_word_ids"][:, :tokens], tf.ones([1, tokens], tf.int32),
                    tf.zeros([1, tokens], tf.int32)]
        for runtime, classify in runtimes.items():
            calls[(runtime, tokens)] = (lambda f, c: lambda: c(*f))(features, classify)
    timings = interleaved_timings(calls, runs)
    return [FloorRow(tokens=t, ms={r: _median_ms(timings[(r, t)]) for r in runtimes}) for t in FLOOR_TOKENS]


def measure_lengths(loaded: dict, texts: dict[str, list[str]], runs: int) -> list[LengthRow]:
    """Times ``serving_default`` of every loaded export (name -> module, the first is the reference) for every
    text of ``length_texts``, interleaved round-robin in one process."""
    import tensorflow as tf

    first = next(iter(loaded.values()))
    calls = {}
    for precision, model in loaded.items():
        serve = model.signatures["serving_default"]
        for kind, batch in texts.items():
            tensor = tf.constant(batch)
            calls[(precision, kind)] = (lambda f, t: lambda: f(text=t))(serve, tensor)
    timings = interleaved_timings(calls, runs)
    rows = []
    for kind, batch in texts.items():
        tensor = tf.constant(batch)
        pieces = int(tf.reduce_max(first.preprocessor.preprocess.tokenize(tensor).merge_dims(-2, -1).row_lengths()))
        bucketed = getattr(first.preprocessor, "bucketed", first.preprocessor)
        rows.append(LengthRow(name=kind, texts=len(batch), word_pieces=pieces,
                              packed_length=int(bucketed(tensor)["input_mask"].shape[1]),
                              ms={p: _median_ms(timings[(p, kind)]) for p in loaded}))
    return rows


def _block(result) -> None:
    """Forces eager results to materialize (``.numpy()``) so timings include the computation."""
    import tensorflow as tf

    for value in tf.nest.flatten(result):
        if hasattr(value, "numpy"):
            value.numpy()


def longest_text(texts_dir: str) -> str:
    root = pathlib.Path(texts_dir) if texts_dir else BUILTIN_TEXTS
    paths = sorted(root.rglob("*.txt"))
    if not paths:
        raise SystemExit(f"--texts-dir: no *.txt under {str(root)!r}")
    return max((p.read_bytes().decode("utf-8", errors="replace").strip() for p in paths), key=len)


def print_report(load: list[LoadResult], share: PreprocessShare | None, seconds: int) -> None:
    if load:
        print(f"\nREST /v1/models/{MODEL_NAME}:predict via dev server, {seconds}s per level, no think time")
        print(f"{'users':>5} {'requests':>9} {'fail':>5} {'req/s':>8} {'texts/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
              f"{'p99 ms':>8}")
        for r in load:
            print(f"{r.users:>5} {r.requests:>9} {r.failures:>5} {r.req_per_s:>8.1f} {r.texts_per_s:>8.1f} "
                  f"{r.p50_ms:>8.0f} {r.p95_ms:>8.0f} {r.p99_ms:>8.0f}")
    if share:
        print(f"\nIn-process, one text ({share.text_chars} chars), median of {share.runs} interleaved runs")
        print(f"  full serving_default : {share.full_ms:8.2f} ms")
        print(f"  preprocessor only    : {share.preprocess_ms:8.2f} ms")
        print(f"  classifier on ids    : {share.classifier_ms:8.2f} ms")
        print(f"  preprocessing share  : {share.preprocess_share:8.1%} of the full call")


def print_lengths(rows: list[LengthRow], versions: dict[str, pathlib.Path], runs: int) -> None:
    precisions = list(versions)
    print(f"\nserving_default in-process, median of {runs} interleaved calls per cell; CPU: {cpu_description()}")
    # These change which kernels run: ONEDNN_MAX_CPU_ISA=AVX512_CORE acts like a CPU without AVX512-BF16,
    # TF_ENABLE_ONEDNN_OPTS=0 like a TensorFlow build without oneDNN.
    knobs = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS") if k in os.environ}
    print(f"  kernel settings: {knobs or 'defaults (oneDNN on, all CPU features)'}")
    for p, path in versions.items():
        print(f"  {p}: {path}")
    others = precisions[1:]  # each compared with the first column (fp32)
    header = "| text | word pieces | packed to | " + " | ".join(f"{p} ms" for p in precisions)
    header += "".join(f" | {p} speed-up" for p in others)
    print(header + " |")
    print("|---" * (header.count("|")) + "|")
    for r in rows:
        cells = [f"{r.ms[p]:.1f}" for p in precisions]
        line = f"| {r.name} | {r.word_pieces} | {r.packed_length} | " + " | ".join(cells)
        line += "".join(f" | {r.ms[precisions[0]] / r.ms[p]:.2f}x" for p in others)
        print(line + " |")
    by_name = {r.name: r for r in rows}
    batches = [r for r in rows if r.texts > 1]
    for batch in batches:
        print("| " + f"{batch.name}, texts/s" + " | | | " + " | ".join(
            f"{batch.texts / batch.ms[p] * 1000:.1f}" for p in precisions) + " |" * (len(others) + 1))
    print("(word pieces: of the text, untruncated; packed to: the bucket of the first window)")
    short_batch, window_batch = batches  # the same number of texts: the ratio of ms is the ratio per text
    for p in precisions:
        short = by_name["short"].ms[p]
        print(f"{p}: a short text costs 1/{by_name['one window'].ms[p] / short:.1f} of one full window "
              f"({short:.1f} vs {by_name['one window'].ms[p]:.1f} ms) and 1/{by_name['whole article'].ms[p] / short:.1f}"
              f" of the whole article as this export reads it ({by_name['whole article'].ms[p]:.1f} ms)")
        print(f"{p}: in batches of {short_batch.texts}, a short text costs 1/"
              f"{window_batch.ms[p] / short_batch.ms[p]:.1f} of a one-window text")


def print_floor(rows: list[FloorRow], version_dir: pathlib.Path, runs: int) -> None:
    print(f"\nFixed cost of one pass: classify_features (encoder + head, no tokenizer), one text, median of {runs}"
          f" interleaved calls; CPU: {cpu_description()}\n  model: {version_dir}")
    print("| tokens | " + " | ".join(f"{r} ms" for r in rows[0].ms) + " |\n" + "|---" * (len(rows[0].ms) + 1) + "|")
    for r in rows:
        print(f"| {r.tokens} | " + " | ".join(f"{ms:.2f}" for ms in r.ms.values()) + " |")
    none, short, full = rows  # FLOOR_TOKENS order
    for runtime in full.ms:
        print(f"{runtime}: {full.tokens} tokens cost {full.ms[runtime] / short.ms[runtime]:.1f}x {short.tokens} tokens "
              f"and {full.ms[runtime] / none.ms[runtime]:.1f}x {none.tokens} tokens (no text): the most a short text "
              f"can save against a full window in this runtime")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_base_path", type=pathlib.Path, nargs="?", default=None,
                   help="Folder with numbered SavedModel versions (default models/bertbc).")
    p.add_argument("--model-base-path", dest="model_base_path_flag", type=pathlib.Path, default=None,
                   help="Same as the positional argument.")
    p.add_argument("--seconds", type=int, default=20, help="Locust run time per concurrency level.")
    p.add_argument("--users", default="1,4,16", help="Comma-separated concurrency levels.")
    p.add_argument("--runs", type=int, default=50, help="Timed in-process calls per variant (medians).")
    p.add_argument("--batch-size", type=int, default=8, help="Texts per batched request in the load test.")
    p.add_argument("--texts-dir", default="", help="Request texts (*.txt, recursive); default loadtest/texts.")
    p.add_argument("--out", type=pathlib.Path, default=None, help="Also write the results as JSON here.")
    p.add_argument("--skip-load", action="store_true", help="Only measure the preprocessing share.")
    p.add_argument("--skip-share", action="store_true", help="Skip the preprocessing share.")
    p.add_argument("--skip-lengths", action="store_true", help="Skip the length x precision table.")
    p.add_argument("--skip-floor", action="store_true",
                   help="Skip the fixed cost of one pass (encoder on 2 / 32 / 256 tokens, graph and XLA).")
    p.add_argument("--bf16-model-base-path", type=pathlib.Path, default=None,
                   help="Versions of the same run exported with --export-precision bf16: adds a bf16 column "
                        "to the length table (default: fp32 only).")
    p.add_argument("--compare", action="append", default=[], metavar="NAME=PATH",
                   help="another model base path to time in the same interleaved length table (repeatable), "
                        "e.g. an export of the same run by an older bertbc: adds a column and its speed-up "
                        "against fp32.")
    args = p.parse_args(argv)
    try:
        args.compare = [(name, pathlib.Path(path)) for name, path in (c.split("=", 1) for c in args.compare)]
    except ValueError:
        p.error("--compare: expected NAME=PATH")
    if args.model_base_path and args.model_base_path_flag and args.model_base_path != args.model_base_path_flag:
        p.error("model_base_path given twice with different values")
    args.model_base_path = args.model_base_path or args.model_base_path_flag or pathlib.Path("models/bertbc")
    try:
        args.users = [int(u) for u in args.users.split(",") if u.strip()]
    except ValueError:
        p.error(f"--users: expected comma-separated integers, got {args.users!r}")
    if not args.users or min(args.users) < 1:
        p.error("--users: every level must be >= 1")
    if args.seconds < 1 or args.runs < 1 or args.batch_size < 1:
        p.error("--seconds, --runs and --batch-size must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    version_dir = latest_version(args.model_base_path)
    print(f"model: {version_dir}", file=sys.stderr)
    load: list[LoadResult] = []
    share = None
    with tempfile.TemporaryDirectory(prefix="bertbc-bench-") as tmp:
        if not args.skip_load:
            load = run_load(args.model_base_path, args.users, args.seconds, args.batch_size, args.texts_dir,
                            pathlib.Path(tmp))
    lengths: list[LengthRow] = []
    floor: list[FloorRow] = []
    versions = {"fp32": version_dir}
    if args.bf16_model_base_path:
        versions["bf16"] = latest_version(args.bf16_model_base_path)
    for name, path in args.compare:
        versions[name] = latest_version(path)
    if not (args.skip_share and args.skip_lengths and args.skip_floor):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (registers the TF-Text ops the preprocessor uses)

        fp32 = tf.saved_model.load(str(version_dir))  # loaded once, shared by the in-process sections
        if not args.skip_share:
            share = measure_preprocess_share(fp32, version_dir, longest_text(args.texts_dir), args.runs)
        if not (args.skip_lengths and args.skip_floor):
            texts = length_texts(args.texts_dir, fp32.preprocessor)
        if not args.skip_lengths:
            loaded = {"fp32": fp32} | {name: tf.saved_model.load(str(path)) for name, path in versions.items()
                                       if name != "fp32"}
            lengths = measure_lengths(loaded, texts, args.runs)
        if not args.skip_floor:
            floor = measure_floor(fp32, texts["one window"][0], args.runs)
    print_report(load, share, args.seconds)
    if lengths:
        print_lengths(lengths, versions, args.runs)
    if floor:
        print_floor(floor, version_dir, args.runs)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"model": str(version_dir), "cpu": cpu_description(),
                                        "load": [asdict(r) for r in load],
                                        "preprocess_share": asdict(share) if share else None,
                                        "lengths": [asdict(r) for r in lengths],
                                        "floor": [asdict(r) for r in floor],
                                        "versions": {k: str(v) for k, v in versions.items()}}, indent=2))
    return 1 if any(r.failures for r in load) else 0


if __name__ == "__main__":
    sys.exit(main())
