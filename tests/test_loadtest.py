"""Tests for loadtest/locustfile.py: its answer checks, and real headless Locust runs (subprocesses).

The runs target a small stand-in HTTP server on 127.0.0.1 that speaks the TF Serving predict API in row
format; it can also answer wrong labels, which the load test must report as failures and a non-zero exit.
One more passing run goes against the real dev server (`python -m serving`).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
LOCUST = ROOT / ".venv" / "bin" / "locust"
BBC_LABELS = ("business", "entertainment", "politics", "sport", "tech")


@pytest.fixture(scope="module")
def lf():
    """The locustfile as a module, imported WITHOUT gevent's monkey patching of this pytest process."""
    previous = os.environ.get("LOCUST_SKIP_MONKEY_PATCH")
    os.environ["LOCUST_SKIP_MONKEY_PATCH"] = "1"
    try:
        spec = importlib.util.spec_from_file_location("bertbc_locustfile_under_test", LOCUSTFILE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
        spec.loader.exec_module(module)
    finally:
        if previous is None:
            os.environ.pop("LOCUST_SKIP_MONKEY_PATCH", None)
        else:
            os.environ["LOCUST_SKIP_MONKEY_PATCH"] = previous
    return module


# ---------------------------------------------------------------- stand-in server


def _fake_prediction(text: str, wrong_label: bool) -> dict:
    """A deterministic softmax over 5 classes derived from the text's hash, like a real model's answer."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    logits = [b / 64.0 for b in digest[:5]]
    peak = max(logits)
    exps = [math.exp(x - peak) for x in logits]
    probs = [e / sum(exps) for e in exps]
    class_id = max(range(5), key=probs.__getitem__)
    return {"probabilities": probs, "class_id": class_id, "label": "weather" if wrong_label else BBC_LABELS[class_id]}


class _StandInHandler(BaseHTTPRequestHandler):
    wrong_label = False
    predict_path = "/v1/models/bertbc:predict"
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 (http.server naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != self.predict_path:
            return self._reply(404, {"error": f"Servable not found for request: {self.path}"})
        try:
            instances = json.loads(body)["instances"]
        except (ValueError, KeyError, TypeError):
            return self._reply(400, {"error": "Missing 'inputs' or 'instances' key"})
        self._reply(200, {"predictions": [_fake_prediction(t, self.wrong_label) for t in instances]})

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_args):  # keep pytest output clean
        pass


def _serve(wrong_label: bool, predict_path: str = "/v1/models/bertbc:predict"):
    handler = type("Handler", (_StandInHandler,), {"wrong_label": wrong_label, "predict_path": predict_path})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def stand_in():
    servers = []

    def start(wrong_label: bool = False, predict_path: str = "/v1/models/bertbc:predict") -> str:
        server, _ = _serve(wrong_label, predict_path)
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- running Locust


def run_locust(host: str, tmp_path: pathlib.Path, *extra: str, run_time: str = "4s") -> tuple[subprocess.CompletedProcess,
                                                                                              dict]:
    """Runs a bounded headless Locust against ``host``; returns the process and the CSV "Aggregated" row."""
    if not LOCUST.exists():
        pytest.fail(f"{LOCUST} is missing; run `make install`")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "BERTBC_LOADTEST"))}
    prefix = tmp_path / "run"
    cmd = [str(LOCUST), "-f", str(LOCUSTFILE), "--headless", "-u", "4", "-r", "4", "-t", run_time,
           "--host", host, "--csv", str(prefix), "--only-summary", "--stop-timeout", "2",
           "--loglevel", "INFO", "--think-time-ms", "20", *extra]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    with open(f"{prefix}_stats.csv", newline="") as f:
        aggregated = next(row for row in csv.DictReader(f) if row["Name"] == "Aggregated")
    return proc, aggregated


def test_passing_run_against_stand_in_has_no_failures(stand_in, tmp_path):
    proc, total = run_locust(stand_in(), tmp_path, "--max-p95-ms", "5000", "--max-p99-ms", "10000")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "bertbc loadtest PASS" in proc.stderr
    # The CSV report holds the final totals, the ones the verdict saw (Locust alone writes a snapshot up to 1 s old).
    verdict_requests = int(re.search(r"bertbc loadtest PASS: requests=(\d+)", proc.stderr).group(1))
    assert int(total["Request Count"]) == verdict_requests > 10
    assert int(total["Failure Count"]) == 0
    names = {row["Name"] for row in csv.DictReader(open(tmp_path / "run_stats.csv"))}
    assert {"predict 1 short", "predict 1 long", "predict batch short", "predict batch long"} <= names


def test_impossible_latency_threshold_fails_the_run(stand_in, tmp_path):
    proc, total = run_locust(stand_in(), tmp_path, "--max-p95-ms", "0.001", run_time="3s")
    assert int(total["Failure Count"]) == 0
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "bertbc loadtest FAIL" in proc.stderr and "p95" in proc.stderr


def test_wrong_labels_are_failures_and_fail_the_run(stand_in, tmp_path):
    proc, total = run_locust(stand_in(wrong_label=True), tmp_path, "--max-p95-ms", "5000", run_time="3s")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert int(total["Failure Count"]) == int(total["Request Count"]) > 0
    failures = (tmp_path / "run_failures.csv").read_text()
    assert "unknown label 'weather'" in failures
    assert "bertbc loadtest FAIL" in proc.stderr


def test_version_label_targets_the_label_route(stand_in, tmp_path):
    """Only /labels/stable:predict answers 200 here: a request anywhere else would be a 404 failure."""
    host = stand_in(predict_path="/v1/models/bertbc/labels/stable:predict")
    proc, total = run_locust(host, tmp_path, "--model-version-label", "stable", "--max-p95-ms", "30000",
                              "--max-p99-ms", "60000", run_time="3s")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(total["Failure Count"]) == 0 and int(total["Request Count"]) > 0
    assert "requests go to /v1/models/bertbc/labels/stable:predict" in proc.stderr


@pytest.mark.parametrize(("model", "label", "path"), [
    ("bertbc", "", "/v1/models/bertbc:predict"),
    ("bertbc", "stable", "/v1/models/bertbc/labels/stable:predict"),
    ("bertbc", "canary", "/v1/models/bertbc/labels/canary:predict"),
    ("my model", "a/b", "/v1/models/my%20model/labels/a%2Fb:predict"),
])
def test_predict_path(lf, model, label, path):
    assert lf.predict_path(model, label) == path


def test_custom_texts_dir_and_bad_dir(stand_in, tmp_path):
    texts = tmp_path / "corpus" / "sport"
    texts.mkdir(parents=True)
    (texts / "1.txt").write_bytes(b"Late goal wins the derby.\n")
    (texts / "2.txt").write_bytes(b"Invalid utf-8 \xff still becomes valid JSON text.\n")
    host = stand_in()
    proc, total = run_locust(host, tmp_path, "--texts-dir", str(tmp_path / "corpus"), "--max-p95-ms", "5000",
                             run_time="2s")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 short + 1 long texts" in proc.stderr
    bad = subprocess.run([str(LOCUST), "-f", str(LOCUSTFILE), "--headless", "-u", "1", "-t", "1s", "--host", host,
                          "--texts-dir", str(tmp_path / "missing")], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode != 0
    assert "is not a directory" in bad.stderr


# ---------------------------------------------------------------- pure checks (no network)


def _good_row(class_id: int = 3) -> dict:
    probs = [0.05] * 5
    probs[class_id] = 0.8
    return {"probabilities": probs, "class_id": class_id, "label": BBC_LABELS[class_id]}


@pytest.mark.parametrize(
    ("status", "payload", "n", "expected"),
    [
        (200, {"predictions": [_good_row()]}, 1, None),
        (200, {"predictions": [_good_row(0), _good_row(4)]}, 2, None),
        (503, {"error": "queue full"}, 1, "HTTP 503"),
        (200, "not json", 1, "not JSON"),
        (200, {"outputs": []}, 1, "no 'predictions'"),
        (200, {"predictions": [_good_row()]}, 2, "expected 2 predictions, got 1"),
        (200, {"predictions": [{**_good_row(), "label": "weather"}]}, 1, "unknown label"),
        (200, {"predictions": [{**_good_row(), "probabilities": [0.5, 0.5, 0.5, 0.0, 0.0]}]}, 1, "sum to"),
        (200, {"predictions": [{**_good_row(), "probabilities": [1.0, 0.0]}]}, 1, "expected 5 probabilities"),
        (200, {"predictions": [{**_good_row(3), "class_id": 1}]}, 1, "does not match class_id"),
        (200, {"predictions": [{**_good_row(3), "class_id": 9}]}, 1, "out of range"),
        (200, {"predictions": [{**_good_row(3), "label": "tech", "class_id": 4}]}, 1, "arg-max"),
        (200, {"predictions": [[0.2] * 5]}, 1, "not an object"),
    ],
)
def test_response_problem(lf, status, payload, n, expected):
    body = payload if isinstance(payload, str) else json.dumps(payload)
    problem = lf.response_problem(status, body, n, BBC_LABELS)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem


@pytest.mark.parametrize(
    ("requests", "fail_ratio", "p95", "p99", "passed", "word"),
    [
        (100, 0.0, 50.0, 80.0, True, "PASS"),
        (100, 0.02, 50.0, 80.0, False, "fail ratio"),
        (100, 0.0, 250.0, 80.0, False, "p95"),
        (100, 0.0, 50.0, 900.0, False, "p99"),
        (0, 0.0, 0.0, 0.0, False, "no requests"),
    ],
)
def test_verdict(lf, requests, fail_ratio, p95, p99, passed, word):
    ok, message = lf.verdict(requests, fail_ratio, p95, p99, lf.Thresholds(0.01, 200.0, 500.0))
    assert ok is passed
    assert word in message and message.count("\n") == 0


def test_builtin_texts_split_short_and_long(lf):
    pool = lf.load_texts("")
    assert len(pool.short) >= 5 and len(pool.long) >= 5
    assert max(map(len, pool.short)) <= min(map(len, pool.long))


def test_passing_run_against_dev_server(tmp_path):
    """The real dev server (python -m serving) with the keyword SavedModel from tests/serving_fixtures.py."""
    from tests import serving_fixtures
    base = tmp_path / "models" / "bertbc"
    serving_fixtures.build_keyword_model(str(base / "1"))
    args = ["--model_name=bertbc", f"--model_base_path={base}"]
    with serving_fixtures.dev_server(args, str(tmp_path), wait_models=("bertbc",)) as server:
        # The first call of a fresh SavedModel builds its graph (seconds on a busy machine): warm it up first,
        # as the exported model's warmup records do, so the short run measures serving.
        import requests

        requests.post(f"{server.url}/v1/models/bertbc:predict", json={"instances": ["warm up"]}, timeout=120)
        proc, total = run_locust(server.url, tmp_path, "--max-p95-ms", "30000", "--max-p99-ms", "60000")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(total["Failure Count"]) == 0 and int(total["Request Count"]) > 0
