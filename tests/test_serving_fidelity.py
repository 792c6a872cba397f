"""Dev server behaviours checked against tensorflow/serving's source: startup, JSON errors, batching limits,
Prometheus format, HTTP framing and idle connections (issue 13). Loopback only."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest
import requests
from serving_fixtures import (
    MODEL,
    REPO_ROOT,
    SERVING_URL,
    build_keyword_model,
    dev_server,
    write_broken_version,
)

from serving.batching import load_batching_parameters

pytestmark = pytest.mark.skipif(bool(SERVING_URL), reason="starts its own dev servers")
PREDICT = f"/v1/models/{MODEL}:predict"
SHIPPED_BATCHING = os.path.join(REPO_ROOT, "serving", "batching_parameters.txt")


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    build_keyword_model(str(root / "base" / "1"))
    return root


@pytest.fixture(scope="module")
def server(model_root):
    """The shipped batching and monitoring files, a 1 s idle timeout."""
    args = [f"--model_name={MODEL}", f"--model_base_path={model_root / 'base'}", "--enable_batching",
            f"--batching_parameters_file={SHIPPED_BATCHING}",
            f"--monitoring_config_file={os.path.join(REPO_ROOT, 'serving', 'monitoring.config')}",
            "--idle_connection_timeout_seconds=1"]
    with dev_server(args, str(model_root), wait_models=(MODEL,)) as running:
        yield running


def raw(server, payload: bytes, timeout: float = 10.0) -> bytes:
    """Sends raw bytes, half-closes, returns everything the server answers before closing."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


# ------------------------------------------------------------------------------------------------ startup


def test_port_refuses_connections_until_the_model_is_available(model_root, tmp_path):
    """server.cc: ServerCore::Create (which waits for the models) runs before the HTTP server starts."""
    base = tmp_path / "slow"
    build_keyword_model(str(base / "1"))
    from trainer.warmup import write_warmup_requests

    write_warmup_requests(str(base / "1"), ["football match"] * 8, model_name=MODEL)
    args = [f"--model_name={MODEL}", f"--model_base_path={base}", "--num_request_iterations_for_warmup=150"]
    from serving_fixtures import DevServer

    server = DevServer(args, str(tmp_path / "server.log"))
    refused, answers = 0, []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.proc.poll() is None:
            try:
                r = requests.post(server.url + PREDICT, json={"instances": ["football"]}, timeout=10)
                answers.append(r.status_code)
                if r.status_code == 200:
                    break
            except requests.ConnectionError:
                refused += 1
            time.sleep(0.05)
    finally:
        server.stop()
    assert refused > 0, "the port accepted connections before the model was loaded"
    assert answers and set(answers) == {200}, answers  # never "404 Servable not found"


def test_initial_load_failure_exits_like_the_real_server(tmp_path):
    base = tmp_path / "broken"
    write_broken_version(str(base), 1)
    out = subprocess.run(
        [sys.executable, "-m", "serving", "--rest_api_port=0", f"--model_base_path={base}", f"--model_name={MODEL}",
         "--max_num_load_retries=0"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES=""),
    )
    assert out.returncode == 255, out.stderr[-2000:]
    # server_core.cc: "{" + ServableId::DebugString() ("{name: x version: 1}") + " due to error: " + status
    assert ("Failed to start server. Error: UNKNOWN: 1 model(s) did not become available: "
            f"{{{{{{name: {MODEL} version: 1}} due to error: DATA_LOSS: Can't parse") in out.stderr


# ------------------------------------------------------------------------------------------------ JSON


@pytest.mark.parametrize(
    "body,status,message",
    [
        # rapidjson 1.1.0 reader.h: a high surrogate without a low one, offset of its backslash
        (b'{"instances": ["\\ud800"]}', 400, "JSON Parse error: The surrogate pair in string is invalid. at offset: 16"),
        (b'{"instances": ["ab\\ud800\\u0041"]}', 400,
         "JSON Parse error: The surrogate pair in string is invalid. at offset: 18"),
        (b'{"instances": ["\\x"]}', 400, "JSON Parse error: Invalid escape character in string. at offset: 16"),
        (b'{"instances": ["\\u12G4"]}', 400,
         "JSON Parse error: Incorrect hex digit after \\u escape in string. at offset: 16"),
        (b'{"instances": ["a\x01"]}', 400, "JSON Parse error: Invalid escape character in string. at offset: 17"),
        (b'{"instances": [' + b"7" * 5000 + b"]}", 400,
         "JSON Parse error: Number too big to be stored in double. at offset: 15"),
        (b'{"instances": [1.]}', 400, "JSON Parse error: Miss fraction part in number. at offset: 17"),
        (b'{"instances": ["abc', 400, "JSON Parse error: Missing a closing quotation mark in string. at offset: 19"),
    ],
    ids=["lone-high-surrogate", "high-surrogate-then-ascii", "bad-escape", "bad-hex", "control-char",
         "5000-digit-int", "missing-fraction", "unterminated"],
)
def test_invalid_json_gets_rapidjson_400(server, body, status, message):
    r = requests.post(server.url + PREDICT, data=body, timeout=30)
    assert (r.status_code, r.json()) == (status, {"error": message})


@pytest.mark.parametrize("body", [b'{"instances": ["\\udc00 football"]}', b'{"instances": ["\xff\xfe football"]}',
                                  b'{"instances": ["\\ud83d\\ude00 football"]}'],
                         ids=["lone-low-surrogate", "raw-invalid-utf8", "surrogate-pair"])
def test_strings_rapidjson_accepts(server, body):
    r = requests.post(server.url + PREDICT, data=body, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["label"] == "sport"


@pytest.mark.parametrize("depth", [65, 300, 990, 5000])
def test_deep_nesting_is_a_400(server, depth):
    body = b'{"instances": ' + b"[" * depth + b'"a"' + b"]" * depth + b"}"
    r = requests.post(server.url + PREDICT, data=body, timeout=30)
    assert r.status_code == 400 and r.json()["error"]


def test_huge_version_number_in_path(server):
    digits = "9" * 5000
    r = requests.post(f"{server.url}/v1/models/{MODEL}/versions/{digits}:predict", json={"instances": ["a"]},
                      timeout=30)
    assert (r.status_code, r.json()) == (400, {"error": f"Failed to convert version: {digits} to numeric."})


# ------------------------------------------------------------------------------------------------ batching


def test_shipped_batching_parameters_fit_the_load_test_and_readme():
    """Read, not imported: importing locust monkey-patches the test process with gevent."""
    policy = load_batching_parameters(SHIPPED_BATCHING)
    with open(os.path.join(REPO_ROOT, "loadtest", "locustfile.py"), encoding="utf-8") as f:
        loadtest_batch = int(re.search(r'"--batch-size", type=int, default=(\d+)', f.read()).group(1))
    assert 1 < loadtest_batch <= policy.input_limit
    assert policy.split is False


@pytest.mark.parametrize("rows,status", [(1, 200), (8, 200), (32, 200), (33, 400), (1000, 400)])
def test_request_larger_than_max_batch_size_is_rejected(server, rows, status):
    limit = load_batching_parameters(SHIPPED_BATCHING).input_limit
    texts = ["the football match"] * rows
    r = requests.post(server.url + PREDICT, json={"instances": texts}, timeout=60)
    assert r.status_code == status, r.text[:300]
    if status == 400:
        assert r.json() == {"error": f"Task size {rows} is larger than maximum input batch size {limit}"}
    else:
        assert [p["label"] for p in r.json()["predictions"]] == ["sport"] * rows


def test_large_batch_splitting(model_root, tmp_path):
    params = tmp_path / "split.txt"
    params.write_text("max_batch_size { value: 20 }\nenable_large_batch_splitting { value: true }\n"
                      "max_execution_batch_size { value: 4 }\nnum_batch_threads { value: 1 }\n")
    args = [f"--model_name={MODEL}", f"--model_base_path={model_root / 'base'}", "--enable_batching",
            f"--batching_parameters_file={params}"]
    texts = ["football match", "shares market", "election vote", "film music", "software computer"] * 4
    with dev_server(args, str(tmp_path), wait_models=(MODEL,)) as running:
        r = requests.post(running.url + PREDICT, json={"instances": texts}, timeout=60)
        assert r.status_code == 200, r.text
        assert [p["label"] for p in r.json()["predictions"]] == ["sport", "business", "politics", "entertainment",
                                                                  "tech"] * 4
        r = requests.post(running.url + PREDICT, json={"instances": texts + ["x"]}, timeout=60)
        assert r.json() == {"error": "Task size 21 is larger than maximum input batch size 20"}


@pytest.mark.parametrize(
    "text,message",
    [
        ("max_batch_size { value: 8 }\nallowed_batch_sizes: 4\n",
         "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 4; expected 8"),
        ("max_batch_size: 8\n", "max_batch_size"),  # wrapper type: `max_batch_size { value: 8 }`
        ("max_batch_sise { value: 8 }\n", "max_batch_sise"),
    ],
)
def test_bad_batching_parameters_fail_at_start(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_batching_parameters(str(path))


def test_batching_file_without_enable_batching_is_refused(model_root):
    out = subprocess.run(
        [sys.executable, "-m", "serving", "--rest_api_port=0", f"--model_base_path={model_root / 'base'}",
         f"--batching_parameters_file={SHIPPED_BATCHING}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    assert "batching_parameters_file is set without setting server_options.enable_batching to true" in out.stderr


# ------------------------------------------------------------------------------------------------ metrics


def test_prometheus_page_has_tf_serving_format(server):
    requests.post(server.url + PREDICT, json={"instances": ["a"]}, timeout=10)
    requests.get(server.url + "/v1/models", timeout=10)  # 400, no model name
    text = requests.get(server.url + "/monitoring/prometheus/metrics", timeout=10).text
    lines = text.splitlines()
    assert "# TYPE :tensorflow:serving:request_count counter" in lines
    assert "# TYPE :tensorflow:serving:request_latency histogram" in lines
    assert "# TYPE :tensorflow:serving:runtime_latency histogram" in lines
    assert not any(line.startswith("# HELP") or "_total" in line or "_created" in line for line in lines)
    count = next(line for line in lines if line.startswith(f':tensorflow:serving:request_count{{model_name="{MODEL}"'))
    assert count.endswith(" " + str(int(count.rsplit(" ", 1)[1])))  # integer values, like the real exporter
    assert ':tensorflow:serving:request_count{model_name="",status="INVALID_ARGUMENT"}' in text
    assert (f':tensorflow:serving:request_latency_bucket{{model_name="{MODEL}",API="predict",entrypoint="REST",'
            'le="10"}') in text
    assert 'le="18"}' in text and 'le="32.4"}' in text and 'le="+Inf"}' in text
    assert f':tensorflow:serving:runtime_latency_count{{model_name="{MODEL}",API="Predict",runtime="TF1"}}' in text


# ------------------------------------------------------------------------------------------------ HTTP framing


FRAMING = [
    b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}",
    b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n{}",
    b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n{}\r\n0\r\n\r\n",
    b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    b"GET /v1/models/" + MODEL.encode() + b"\r\n\r\n",  # HTTP/0.9
    b"GET /v1/models/" + MODEL.encode() + b" HTTP/1.1000\r\nHost: x\r\n\r\n",
    b"GET /v1/models/" + MODEL.encode() + b" FOO/1.1\r\nHost: x\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET /v1/models/" + MODEL.encode() + b" HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
]


@pytest.mark.parametrize("payload", FRAMING, ids=["negative-length", "text-length", "5000-digit-length",
                                                   "chunk-minus-1", "chunk-zz", "http-0.9", "version-1.1000",
                                                   "unknown-protocol", "garbage", "bad-header"])
def test_malformed_framing_gets_a_json_400(server, payload):
    started = time.monotonic()
    answer = raw(server, payload)
    assert time.monotonic() - started < 5
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"content-type: application/json" in head.lower()
    assert body.startswith(b'{"error": "Malformed HTTP request')


def test_idle_connections_are_closed(server):
    for payload in [b"", b"GET /v1/models/" + MODEL.encode() + b" HTTP/1.1\r\nHost"]:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(payload)
            started = time.monotonic()
            assert s.recv(1024) == b""  # closed by the server, not by our 10 s timeout
            assert time.monotonic() - started < 5


def test_stalled_body_gets_408(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 ") and b'"error"' in answer


def _utf8_json(r: requests.Response) -> dict:
    return json.loads(r.content.decode("utf-8"))  # strict: a raw \xff or CESU-8 surrogate in the body fails here


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        # rapidjson 1.1.0 keeps a lone low surrogate and raw non-UTF-8 bytes; no signature can have that name.
        (PREDICT, b'{"signature_name": "\\udc00", "instances": ["a"]}', 400,
         'Serving signature name: "\ufffd" not found in signature def'),
        (PREDICT, b'{"signature_name": "\xff", "instances": ["a"]}', 400,
         'Serving signature name: "\ufffd" not found in signature def'),
        (f"/v1/models/{MODEL}:classify", b'{"signature_name": "\xff\xfe", "examples": [{}]}', 400,
         "No signature was found with the name: \ufffd\ufffd"),
        (f"/v1/models/{MODEL}:classify", b'{"signature_name": "\\udc00"}', 400,
         "JSON Value: {\"signature_name\":\"\ufffd\"} When method is classify, key 'examples' is expected and was "
         "not found"),
        (f"/v1/models/{MODEL}/labels/%ff:predict", b'{"instances": ["a"]}', 400,
         "Unrecognized servable version label: \ufffd"),
    ],
    ids=["lone-low-surrogate", "raw-ff", "classify-raw-bytes", "debug-string", "label-ff"],
)
def test_non_utf8_names_get_a_4xx_with_a_utf8_body(server, path, body, status, message):
    """The real server echoes such bytes into its error body as they came; ours says U+FFFD (valid UTF-8)."""
    r = requests.post(server.url + path, data=body, timeout=30)
    assert (r.status_code, _utf8_json(r)) == (status, {"error": message})


@pytest.mark.parametrize(("zeros", "version", "status"), [(4300, 1, 200), (5000, 1, 200), (5000, 3, 404)])
def test_version_with_thousands_of_leading_zeros(server, zeros, version, status):
    """absl::SimpleAtoi reads `000…0001` as 1 whatever its length (int() refuses > 4,300 digits)."""
    text = "0" * zeros + str(version)
    r = requests.post(f"{server.url}/v1/models/{MODEL}/versions/{text}:predict", json={"instances": ["cup"]},
                      timeout=30)
    assert r.status_code == status, r.text[:300]
    if status == 404:
        assert r.json() == {"error": f"Servable not found for request: Specific({MODEL}, {version})"}
    else:
        assert r.json()["predictions"][0]["label"] == "sport"
        meta = requests.get(f"{server.url}/v1/models/{MODEL}/versions/{text}/metadata", timeout=30).json()
        assert meta["model_spec"]["version"] == "1"


@pytest.mark.parametrize("expect", [b"", b"Expect: 100-continue\r\n"], ids=["plain", "expect-100"])
def test_declared_body_above_the_limit_gets_413_at_once(server, expect):
    """The 413 is sent before any body byte arrives (not a 408 after the idle timeout)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        started = time.monotonic()
        s.sendall(b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n" + expect
                  + b"\r\n")
        answer = b""
        while b"}" not in answer:
            chunk = s.recv(4096)
            assert chunk, answer
            answer += chunk
    assert time.monotonic() - started < 5
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ") and b"connection: close" in head.lower()
    assert b"100 Continue" not in head
    assert "exceeds the dev server limit --max_request_bytes" in json.loads(body)["error"]


def test_http10_keep_alive_is_honoured(server):
    """libevent: an HTTP/1.0 request with `Connection: keep-alive` keeps the connection open and the answer says
    `Connection: keep-alive` with a Content-Length; without that header the connection closes after one answer."""
    request = b"GET /v1/models/" + MODEL.encode() + b" HTTP/1.0\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        f = s.makefile("rb")
        for _ in range(3):
            s.sendall(request + b"Connection: keep-alive\r\n\r\n")
            head = b"".join(iter(f.readline, b"\r\n")).lower()
            assert head.startswith(b"http/1.1 200 ") and b"connection: keep-alive" in head, head
            length = int(re.search(rb"content-length: *([0-9]+)", head).group(1))
            assert b"AVAILABLE" in f.read(length)
        s.sendall(request + b"\r\n")
        assert f.readline().startswith(b"HTTP/1.1 200 ")
        assert f.read().endswith(b"}")  # read() returns once the server has closed the connection


# ------------------------------------------------------------------------------------------------ start-up noise


NOISE = ("Could not find cuda drivers", "cpu_feature_guard", "cuInit", "absl::InitializeLog")


def test_help_and_a_real_start_print_no_tensorflow_noise(server):
    out = subprocess.run([sys.executable, "-m", "serving", "--help"], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=60, env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert out.returncode == 0 and "--allow_version_labels_for_unavailable_models" in out.stdout
    log = server.log_text()
    assert "Exporting HTTP/REST API" in log
    for text in (out.stdout + out.stderr, log):
        assert not [n for n in NOISE if n in text], text[:2000]


def test_verbose_shows_what_is_hidden():
    """serving/quiet.py with -v (verbose) leaves TensorFlow's start-up lines alone (hidden: the test above)."""
    code = "from serving.quiet import import_tensorflow; import_tensorflow(verbose=True)"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=180,
                         env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    if shutil.which("nvidia-smi") is None:  # no GPU driver: TensorFlow always says so
        assert "Could not find cuda drivers" in out.stderr, out.stderr[:2000]


@pytest.mark.parametrize(("text", "kept"), [
    ("I0000 00:00:1 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.", []),
    ("E0000 00:00:1 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error", []),
    ("To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow", []),
    ("W0000 something TensorFlow really wants you to see\n\n", ["W0000 something TensorFlow really wants you to see"]),
])
def test_filter_startup_lines(text, kept):
    from serving.quiet import filter_startup_lines

    assert filter_startup_lines(text) == kept
