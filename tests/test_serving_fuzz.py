"""A seeded fuzz of the dev server over loopback, bounded in time: malformed JSON from a small grammar,
odd URLs, and HTTP framing abuse. Every request must get a status line with a status below 500, JSON errors on
the API paths (valid UTF-8 even when the request was not), an answer within seconds, and the server must stay
alive and small.

Classes added for issue 24: signature names with raw non-UTF-8 bytes or lone surrogates, versions of more than
4,300 digits that are small once their leading zeros go, label routes, a declared Content-Length above the body
limit, and HTTP/1.0 keep-alive requests.

Reproduce a failure with the printed seed: BERTBC_FUZZ_SEED=<seed> pytest tests/test_serving_fuzz.py
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import time

import pytest
import requests
from serving_fixtures import MODEL, REPO_ROOT, SERVING_URL, build_keyword_model, dev_server

pytestmark = pytest.mark.skipif(bool(SERVING_URL), reason="starts its own dev server")
SEED = int(os.environ.get("BERTBC_FUZZ_SEED", "20261127"))
BUDGET_S = 40.0
MAX_REQUESTS = 1500
MAX_BODY = 1_000_000  # --max_request_bytes of the fuzzed server
PREDICT = f"/v1/models/{MODEL}:predict"


def _string(rng: random.Random) -> str:
    pieces = ["football", "é", "日本", "\\n", '\\"', "\\\\", "\\u0041", "\\ud800", "\\udc00", "\\ud83d\\ude00",
              "\\x", "\\u12G4", "\x01", "\xff"]
    return '"' + "".join(rng.choice(pieces) for _ in range(rng.randint(0, 6))) + '"'


def _value(rng: random.Random, depth: int = 0) -> str:
    kind = rng.choice("ssnnlloobkdi" if depth < 4 else "snb")
    if kind == "s":
        return _string(rng)
    if kind == "n":
        return rng.choice(["0", "-1", "1.5", "1e308", "1e999", "-0.0", "NaN", "Infinity", "1.", "1e", "01",
                           str(rng.randint(-2**70, 2**70)), "9" * rng.choice([19, 20, 400, 4301, 6000])])
    if kind == "b":
        return rng.choice(["true", "false", "null"])
    if kind == "l":
        return "[" + ", ".join(_value(rng, depth + 1) for _ in range(rng.randint(0, 4))) + "]"
    if kind == "o":
        keys = ["text", "b64", "instances", "inputs", "x"]
        return "{" + ", ".join(f'"{rng.choice(keys)}": {_value(rng, depth + 1)}' for _ in range(rng.randint(0, 3))) + "}"
    if kind == "k":
        return '{"b64": ' + rng.choice(['"Zm9vdGJhbGw="', '"!!"', "5", '"Zm9v"']) + "}"
    if kind == "d":
        n = rng.choice([2, 33, 65, 300, 990, 3000])
        return "[" * n + _string(rng) + "]" * n
    return str(rng.randint(0, 10))


def _body(rng: random.Random) -> bytes:
    top = rng.choice(["instances", "inputs", "instances", "signature_name", "examples"])
    items = ", ".join(_value(rng) for _ in range(rng.choice([0, 1, 2, 8, 33, 200])))
    signature = f'"signature_name": {_string(rng)}, ' if rng.random() < 0.2 else ""
    body = f'{{{signature}"{top}": [{items}]}}'.encode("utf-8", "surrogatepass")
    mutation = rng.random()
    if mutation < 0.15 and body:
        cut = rng.randrange(len(body))
        body = body[:cut]
    elif mutation < 0.3 and body:
        i = rng.randrange(len(body))
        body = body[:i] + bytes([rng.randrange(256)]) + body[i + 1:]
    elif mutation < 0.35:
        body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
    return body


def _path(rng: random.Random) -> bytes:
    return rng.choice([
        PREDICT, PREDICT, PREDICT, f"/v1/models/{MODEL}", f"/v1/models/{MODEL}/metadata",
        f"/v1/models/{MODEL}/versions/{'9' * rng.choice([1, 19, 20, 5000])}:predict",
        f"/v1/models/{MODEL}/versions/{'0' * rng.choice([4300, 5000]) + rng.choice(['1', '3'])}:predict",
        f"/v1/models/{MODEL}/versions/{'0' * 4400}1/metadata",
        f"/v1/models/{MODEL}/labels/%ff:predict", f"/v1/models/{MODEL}/labels/stable:predict",
        f"/v1/models/{MODEL}/labels/%ed%b0%80/metadata", f"/v1/models/{MODEL}/labels/x",
        "/v1/models/%00:predict", f"/V1/MODELS/{MODEL}:PREDICT",
        f"/v1/models/{MODEL}:classify", "/v1/models", "/v1/", "/", "/monitoring/prometheus/metrics",
        f"/v1/models/{MODEL}/versions/١:predict",
    ]).encode("utf-8")


def _request(rng: random.Random) -> bytes:
    method = rng.choice([b"POST"] * 6 + [b"GET", b"PUT", b"HEAD", b"OPTIONS", b"DELETE"])
    path, body = _path(rng), _body(rng)
    version = rng.choice([b"HTTP/1.1"] * 8 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1000", b"", b"FOO/1", b"HTTP/9.9"])
    line = method + b" " + path + (b" " + version if version else b"") + b"\r\n"
    keep_alive = version == b"HTTP/1.0" and rng.random() < 0.5
    headers = [b"Host: 127.0.0.1", b"Connection: keep-alive" if keep_alive else b"Connection: close"]
    framing = rng.random()
    if framing < 0.05:
        headers.append(b"Content-Length: " + str(MAX_BODY + rng.choice([1, 10**6, 10**15])).encode())
        payload = body  # far less than declared: the 413 must not wait for the rest
    elif framing < 0.6:
        headers.append(b"Content-Length: " + str(len(body)).encode())
        payload = body
    elif framing < 0.75:
        headers.append(b"Transfer-Encoding: chunked")
        size = rng.choice([f"{len(body):x}", "-1", "zz", "ffffffffffffffffffff", f"{len(body) + 5:x}", "0x10"])
        payload = size.encode() + b"\r\n" + body + b"\r\n0\r\n\r\n"
    elif framing < 0.9:
        headers.append(b"Content-Length: " + rng.choice([b"-5", b"abc", b"9" * 5000, b"1e3", b"", b"+5",
                                                         str(len(body)).encode() + b", 1"]))
        payload = body
    else:
        payload = body  # no framing header at all
    if rng.random() < 0.05:
        headers.append(b"X-Big: " + b"a" * rng.choice([100, 20000]))
    return line + b"\r\n".join(headers) + b"\r\n\r\n" + payload


def _exchange(port: int, request: bytes) -> tuple[bytes, float]:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        try:
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may answer and close before reading everything
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer, time.monotonic() - started


def _is_error_json(answer: bytes) -> bool:
    """Whether the first response's body is UTF-8 JSON of the form {"error": "..."} (a keep-alive connection
    may carry a second response after it)."""
    head, _, rest = answer.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *([0-9]+)\r?$", head)
    try:
        body = rest[: int(length.group(1))] if length else rest
        return isinstance(json.loads(body.decode("utf-8")).get("error"), str)
    except (UnicodeDecodeError, ValueError, AttributeError):
        return False


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    build_keyword_model(str(root / "base" / "1"))
    args = [f"--model_name={MODEL}", f"--model_base_path={root / 'base'}", "--enable_batching",
            f"--batching_parameters_file={os.path.join(REPO_ROOT, 'serving', 'batching_parameters.txt')}",
            f"--monitoring_config_file={os.path.join(REPO_ROOT, 'serving', 'monitoring.config')}",
            "--idle_connection_timeout_seconds=2", "--rest_api_timeout_in_ms=5000", f"--max_request_bytes={MAX_BODY}"]
    with dev_server(args, str(root), wait_models=(MODEL,)) as running:
        yield running


def test_seeded_fuzz(server):
    rng = random.Random(SEED)
    rss_start = _rss_mb(server.proc.pid)
    deadline = time.monotonic() + BUDGET_S
    sent, problems = 0, []
    while time.monotonic() < deadline and sent < MAX_REQUESTS and len(problems) < 5:
        request = _request(rng)
        answer, elapsed = _exchange(server.port, request)
        sent += 1
        status_line = answer.split(b"\r\n", 1)[0]
        head = answer.split(b"\r\n\r\n", 1)[0].lower()
        ok = status_line.startswith(b"HTTP/1.1 ") and len(status_line) >= 12 and status_line[9:12].isdigit()
        status = int(status_line[9:12]) if ok else 0
        target = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
        api_path = target.lower().startswith(b"/v1/") and not request.startswith(b"OPTIONS")
        if not ok:
            problems.append(f"no status line ({elapsed:.1f}s): {request[:120]!r} -> {answer[:120]!r}")
        elif status >= 500:
            problems.append(f"{status}: {request[:120]!r} -> {answer[-300:]!r}")
        elif status >= 400 and api_path and b"content-type: application/json" not in head:
            problems.append(f"non-JSON {status}: {request[:120]!r} -> {answer[:200]!r}")
        elif status >= 400 and api_path and not request.startswith(b"HEAD") and not _is_error_json(answer):
            problems.append(f"error body not UTF-8 JSON {status}: {request[:120]!r} -> {answer[-200:]!r}")
        elif elapsed > 10:
            problems.append(f"slow ({elapsed:.1f}s): {request[:120]!r}")
    assert not problems, f"seed {SEED}, after {sent} requests:\n" + "\n".join(problems)
    assert sent >= 200, f"only {sent} requests in {BUDGET_S}s"
    r = requests.post(server.url + PREDICT, json={"instances": ["the football match"]}, timeout=10)
    assert r.status_code == 200 and r.json()["predictions"][0]["label"] == "sport"
    growth = _rss_mb(server.proc.pid) - rss_start
    assert growth < 400, f"server grew {growth:.0f} MB during the fuzz"
