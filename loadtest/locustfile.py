"""Locust load test for the bertbc REST API (TensorFlow Serving or the dev server, same API).

Users POST raw news text to ``/v1/models/<model>:predict`` in TF Serving's row format
(``{"instances": ["text", ...]}``), one text or a batch, short or long, and every answer is checked:
HTTP 200, JSON, one prediction per instance, a known label that matches ``class_id`` and the arg-max of
``probabilities``, and probabilities that sum to 1. A wrong answer is a failed request, not a success.

Thresholds are custom Locust options checked when Locust quits; the verdict becomes the exit code::

    locust -f loadtest/locustfile.py --headless -u 8 -r 2 -t 60s --host http://127.0.0.1:8501 \\
        --max-fail-ratio 0.01 --max-p95-ms 2000 --max-p99-ms 5000

Texts come from ``--texts-dir`` / ``$BERTBC_LOADTEST_TEXTS`` (every ``*.txt`` below it, e.g. the BBC
corpus), else from the small built-in set in ``loadtest/texts/``.

``--model-version-label stable`` / ``$BERTBC_LOADTEST_VERSION_LABEL=stable`` sends every request to the version a
label names, ``/v1/models/<model>/labels/stable:predict`` (TF Serving's version labels, set in the server's
``--model_config_file``), e.g. to keep load on ``stable`` while ``canary`` is promoted or rolled back.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import pathlib
import random
import urllib.parse
from dataclasses import dataclass

import gevent
from locust import FastHttpUser, events, stats, task
from locust.runners import WorkerRunner

BBC_LABELS = ("business", "entertainment", "politics", "sport", "tech")
BUILTIN_TEXTS_DIR = pathlib.Path(__file__).resolve().parent / "texts"
PROBABILITY_SUM_TOLERANCE = 1e-3
MAX_TEXTS = 5000

logger = logging.getLogger("bertbc.loadtest")


@dataclass(frozen=True)
class TextPool:
    """Request texts split at the median length, so tasks can ask for short or long ones.

    Attributes:
        short: The shorter half of the texts (at least one text).
        long: The longer half of the texts (at least one text).
        source: The folder the texts were read from, for the log.
    """

    short: tuple[str, ...]
    long: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class Thresholds:
    """Pass/fail limits for a whole run (Locust's aggregated "Total" row)."""

    max_fail_ratio: float
    max_p95_ms: float
    max_p99_ms: float


@functools.lru_cache(maxsize=4)
def load_texts(folder: str = "", *, max_texts: int = MAX_TEXTS, seed: int = 0) -> TextPool:
    """Reads every ``*.txt`` below ``folder`` (recursively) into a :class:`TextPool`.

    Files are decoded as UTF-8 with replacement (the BBC corpus has one invalid file; the JSON body
    must be valid text either way). Cached, because every simulated user asks for the same pool.

    Args:
        folder: Directory to search; empty means the built-in ``loadtest/texts/``.
        max_texts: Upper bound on texts kept (a seeded sample), to bound memory and start-up time.
        seed: Seed of that sample.

    Returns:
        The pool; ``short`` and ``long`` are each non-empty.

    Raises:
        ValueError: If ``folder`` is not a directory or holds no non-empty ``*.txt`` file.
    """
    root = pathlib.Path(folder) if folder else BUILTIN_TEXTS_DIR
    if not root.is_dir():
        raise ValueError(f"--texts-dir / BERTBC_LOADTEST_TEXTS: {str(root)!r} is not a directory")
    paths = sorted(root.rglob("*.txt"))
    if len(paths) > max_texts:
        paths = sorted(random.Random(seed).sample(paths, max_texts))
    texts = [p.read_bytes().decode("utf-8", errors="replace").strip() for p in paths]
    texts = sorted((t for t in texts if t), key=len)
    if not texts:
        raise ValueError(f"--texts-dir / BERTBC_LOADTEST_TEXTS: no non-empty *.txt file below {str(root)!r}")
    half = max(1, len(texts) // 2)
    return TextPool(short=tuple(texts[:half]), long=tuple(texts[half:] or texts), source=str(root))


def response_problem(status_code: int, body: str | None, num_instances: int, labels: tuple[str, ...]) -> str | None:
    """Says what is wrong with one predict response, or ``None`` if it is a correct answer.

    Args:
        status_code: HTTP status (0 when the connection failed).
        body: Response body text (may be ``None`` on connection errors).
        num_instances: How many texts were sent; the answer must hold exactly that many predictions.
        labels: Known class names in class-id order (``labels[class_id] == label``).

    Returns:
        A short human-readable reason (shown in Locust's failure table) or ``None``.
    """
    body = body or ""
    if status_code != 200:
        return f"HTTP {status_code}: {body[:200]}"
    try:
        payload = json.loads(body)
    except ValueError:
        return f"response is not JSON: {body[:100]!r}"
    predictions = payload.get("predictions") if isinstance(payload, dict) else None
    if not isinstance(predictions, list):
        return f"no 'predictions' list in response: {body[:100]!r}"
    if len(predictions) != num_instances:
        return f"expected {num_instances} predictions, got {len(predictions)}"
    for row in predictions:
        problem = _prediction_problem(row, labels)
        if problem:
            return problem
    return None


def _prediction_problem(row: object, labels: tuple[str, ...]) -> str | None:
    """Checks one row-format prediction ``{"probabilities": [C floats], "class_id": k, "label": s}``."""
    if not isinstance(row, dict):
        return f"prediction is not an object: {str(row)[:80]}"
    probs, class_id, label = row.get("probabilities"), row.get("class_id"), row.get("label")
    if label not in labels:
        return f"unknown label {label!r}"
    if not isinstance(probs, list) or len(probs) != len(labels):
        return f"expected {len(labels)} probabilities, got {str(probs)[:80]}"
    if not all(isinstance(p, (int, float)) and math.isfinite(p) and 0.0 <= p <= 1.0 for p in probs):
        return f"probabilities not finite in [0, 1]: {str(probs)[:80]}"
    total = math.fsum(probs)
    if abs(total - 1.0) > PROBABILITY_SUM_TOLERANCE:
        return f"probabilities sum to {total:.6f}, not 1"
    if not isinstance(class_id, int) or isinstance(class_id, bool) or not 0 <= class_id < len(labels):
        return f"class_id {class_id!r} out of range"
    if labels[class_id] != label:
        return f"label {label!r} does not match class_id {class_id} ({labels[class_id]!r})"
    if probs[class_id] < max(probs) - 1e-6:
        return f"class_id {class_id} is not the arg-max of the probabilities"
    return None


def verdict(num_requests: int, fail_ratio: float, p95_ms: float, p99_ms: float,
            thresholds: Thresholds) -> tuple[bool, str]:
    """Turns a run's aggregate numbers into (passed, one-line message). A run with no requests fails."""
    reasons = []
    if num_requests == 0:
        reasons.append("no requests were made")
    if fail_ratio > thresholds.max_fail_ratio:
        reasons.append("fail ratio")
    if p95_ms > thresholds.max_p95_ms:
        reasons.append("p95")
    if p99_ms > thresholds.max_p99_ms:
        reasons.append("p99")
    passed = not reasons
    message = (
        f"bertbc loadtest {'PASS' if passed else 'FAIL'}: requests={num_requests} "
        f"fail_ratio={fail_ratio:.4f} (max {thresholds.max_fail_ratio:g}) "
        f"p95={p95_ms:.0f}ms (max {thresholds.max_p95_ms:g}) p99={p99_ms:.0f}ms (max {thresholds.max_p99_ms:g})"
    )
    if reasons:
        message += " exceeded: " + ", ".join(reasons)
    return passed, message


def predict_path(model_name: str, version_label: str = "") -> str:
    """The predict URL path: the served (newest) version, or the one `version_label` names.

    Example:
        >>> predict_path("bertbc", "stable")
        '/v1/models/bertbc/labels/stable:predict'
    """
    if not model_name:
        raise ValueError("--model-name must not be empty")
    model = urllib.parse.quote(model_name, safe="")
    if not version_label:
        return f"/v1/models/{model}:predict"
    return f"/v1/models/{model}/labels/{urllib.parse.quote(version_label, safe='')}:predict"


def _labels(option: str) -> tuple[str, ...]:
    labels = tuple(s.strip() for s in option.split(",") if s.strip())
    if not labels:
        raise ValueError(f"--labels: expected comma-separated class names, got {option!r}")
    return labels


@events.init_command_line_parser.add_listener
def _add_options(parser, **_kwargs) -> None:
    group = parser.add_argument_group("bertbc", "bertbc load test options")
    group.add_argument("--max-fail-ratio", type=float, default=0.01, env_var="LOCUST_MAX_FAIL_RATIO",
                       help="Fail the run if more than this share of requests failed (0..1). Default 0.01.")
    group.add_argument("--max-p95-ms", type=float, default=2000.0, env_var="LOCUST_MAX_P95_MS",
                       help="Fail the run if the 95th percentile response time exceeds this (ms).")
    group.add_argument("--max-p99-ms", type=float, default=5000.0, env_var="LOCUST_MAX_P99_MS",
                       help="Fail the run if the 99th percentile response time exceeds this (ms).")
    group.add_argument("--texts-dir", default="", env_var="BERTBC_LOADTEST_TEXTS",
                       help="Folder searched recursively for *.txt request texts (default: loadtest/texts).")
    group.add_argument("--labels", default=",".join(BBC_LABELS), env_var="BERTBC_LOADTEST_LABELS",
                       help="Known class names in class-id order, comma-separated (default: the 5 BBC classes).")
    group.add_argument("--batch-size", type=int, default=8, env_var="BERTBC_LOADTEST_BATCH_SIZE",
                       help="Texts per batched request (must not exceed the server's max_batch_size).")
    group.add_argument("--think-time-ms", type=float, default=100.0, env_var="BERTBC_LOADTEST_THINK_TIME_MS",
                       help="Mean pause between a user's requests (uniform 0..2x); 0 = closed loop at full speed.")
    group.add_argument("--model-name", default="bertbc", env_var="BERTBC_MODEL_NAME",
                       help="Model name in the predict URL.")
    group.add_argument("--model-version-label", default="", env_var="BERTBC_LOADTEST_VERSION_LABEL",
                       help="Send requests to /v1/models/<model>/labels/<label>:predict (e.g. stable, canary); "
                       "default: the newest version, /v1/models/<model>:predict.")


@events.init.add_listener
def _validate_options(environment, **_kwargs) -> None:
    options = environment.parsed_options
    if options is None:  # library use without a command line (e.g. run_single_user)
        return
    if not 0.0 <= options.max_fail_ratio <= 1.0:
        raise ValueError(f"--max-fail-ratio must be in [0, 1], got {options.max_fail_ratio}")
    for name in ("max_p95_ms", "max_p99_ms", "think_time_ms"):
        if getattr(options, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(options, name)}")
    if options.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {options.batch_size}")
    _labels(options.labels)
    logger.info("bertbc loadtest: requests go to %s", predict_path(options.model_name, options.model_version_label))
    pool = load_texts(options.texts_dir)  # fail at start, not in every user, if the folder is unusable
    logger.info("bertbc loadtest: %d short + %d long texts from %s", len(pool.short), len(pool.long), pool.source)


@events.quitting.add_listener
def _let_csv_catch_up(environment, **_kwargs) -> None:
    """Waits one CSV interval so ``--csv`` files hold the final numbers, not a snapshot up to 1 s old.

    Locust's CSV writer rewrites ``<prefix>_stats.csv`` every ``CSV_STATS_INTERVAL_SEC`` and only closes the file
    at shutdown (locustio/locust#1806, #2299): a short run's report could miss its last requests, even all of them.
    The users have stopped when ``quitting`` fires, so the writer's next pass writes the totals the verdict uses.
    """
    options = environment.parsed_options
    if isinstance(environment.runner, WorkerRunner) or options is None or not getattr(options, "csv_prefix", None):
        return
    gevent.sleep(stats.CSV_STATS_INTERVAL_SEC + 0.2)


@events.quitting.add_listener
def _check_thresholds(environment, **_kwargs) -> None:
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return  # the master (or the standalone process) owns the aggregated stats and the verdict
    options = environment.parsed_options
    total = environment.stats.total
    passed, message = verdict(
        total.num_requests,
        total.fail_ratio,
        total.get_response_time_percentile(0.95) or 0.0,
        total.get_response_time_percentile(0.99) or 0.0,
        Thresholds(options.max_fail_ratio, options.max_p95_ms, options.max_p99_ms),
    )
    (logger.info if passed else logger.error)(message)
    environment.process_exit_code = 0 if passed else 1


class NewsClassifierUser(FastHttpUser):
    """A client sending news articles for classification, mostly one at a time, sometimes in batches."""

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.path = predict_path(getattr(options, "model_name", "bertbc"), getattr(options, "model_version_label", ""))
        self.labels = _labels(getattr(options, "labels", ",".join(BBC_LABELS)))
        self.batch_size = getattr(options, "batch_size", 8)
        self.think_s = getattr(options, "think_time_ms", 100.0) / 1000.0
        self.pool = load_texts(getattr(options, "texts_dir", ""))

    def wait_time(self) -> float:
        return random.uniform(0.0, 2.0 * self.think_s)

    def _predict(self, texts: list[str], name: str) -> None:
        with self.client.post(self.path, json={"instances": texts}, name=name, catch_response=True) as resp:
            body = resp.content.decode("utf-8", errors="replace") if resp.content else str(resp.error or "")
            problem = response_problem(resp.status_code, body, len(texts), self.labels)
            if problem:
                resp.failure(problem)
            else:
                resp.success()

    @task(6)
    def predict_one_short(self) -> None:
        self._predict([random.choice(self.pool.short)], "predict 1 short")

    @task(3)
    def predict_one_long(self) -> None:
        self._predict([random.choice(self.pool.long)], "predict 1 long")

    @task(1)
    def predict_batch_short(self) -> None:
        self._predict(random.choices(self.pool.short, k=self.batch_size), "predict batch short")

    @task(1)
    def predict_batch_long(self) -> None:
        self._predict(random.choices(self.pool.long, k=self.batch_size), "predict batch long")
