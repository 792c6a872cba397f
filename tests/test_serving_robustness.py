"""The dev server under load and abuse, the client, the warmup writer, metrics and CLI."""

from __future__ import annotations

import concurrent.futures
import os
import socket
import subprocess
import sys
import time
import urllib.parse

import numpy as np
import pytest
import requests
from serving_fixtures import MODEL, REPO_ROOT, SERVING_URL, build_keyword_model, dev_server, expected_label

from serving import client
from serving.json_tensor import format_float

PREDICT = f"/v1/models/{MODEL}:predict"
MAX_BYTES = 3_000_000
dev_only = pytest.mark.skipif(bool(SERVING_URL), reason="dev-server specific")
_BASE_PATHS: dict[str, str] = {}  # server url -> its model base path


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    if SERVING_URL:
        yield SERVING_URL
        return
    root = tmp_path_factory.mktemp("serving_robustness")
    build_keyword_model(str(root / "base" / "1"))
    monitoring = root / "monitoring.config"
    monitoring.write_text('prometheus_config {\n  enable: true,\n  path: "/monitoring/prometheus/metrics"\n}\n')
    args = [f"--model_name={MODEL}", f"--model_base_path={root / 'base'}", "--file_system_poll_wait_seconds=0.2",
            f"--max_request_bytes={MAX_BYTES}", f"--monitoring_config_file={monitoring}"]
    with dev_server(args, str(root), wait_models=(MODEL,)) as server:
        _BASE_PATHS[server.url] = str(root / "base")
        yield server.url


def alive(url: str) -> bool:
    r = requests.post(url + PREDICT, json={"instances": ["football"]}, timeout=10)
    return r.status_code == 200 and r.json()["predictions"][0]["label"] == "sport"


def test_concurrent_clients(url):
    texts = ["football match", "shares market", "election vote", "film music", "software computer"]

    def worker(i):
        errors = []
        with requests.Session() as session:
            for j in range(20):
                batch = [texts[(i + j + k) % 5] for k in range(1 + j % 3)]
                r = session.post(url + PREDICT, json={"instances": batch}, timeout=60)
                if r.status_code != 200:
                    errors.append(r.text)
                elif [p["label"] for p in r.json()["predictions"]] != [expected_label(t) for t in batch]:
                    errors.append(f"wrong labels for {batch}: {r.text[:200]}")
        return errors

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        errors = [e for result in pool.map(worker, range(16)) for e in result]
    assert errors == []


@dev_only
def test_oversize_request_gets_clear_4xx_and_server_survives(url):
    body = b'{"instances": ["' + b"x" * (MAX_BYTES + 10) + b'"]}'
    r = requests.post(url + PREDICT, data=body, timeout=60)
    assert r.status_code == 413
    assert "--max_request_bytes=3000000" in r.json()["error"]
    assert alive(url)


@dev_only
def test_chunked_request_body(url):
    parts = [b'{"instances": ', b'["the football', b' match"]}']
    r = requests.post(url + PREDICT, data=iter(parts), timeout=10)  # generator -> Transfer-Encoding: chunked
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["label"] == "sport"


@pytest.mark.parametrize(
    "body,status,label",
    [
        (b'{"instances": ["\xff\xfe football"]}', 200, "sport"),  # raw invalid UTF-8 is accepted like rapidjson
        (b'{"instances": ["football"]} trailing garbage', 200, "sport"),  # kParseStopWhenDoneFlag
        (b'{"instances": ["football"], "instances": ["shares"]}', 200, "sport"),  # first duplicate wins
        (b"[" * 200_000, 400, None),
        (b'{"instances": [NaN]}', 400, None),
        (b'{"instances": [1e999]}', 400, None),
        (b'{"instances": [null]}', 400, None),
        (b'{"instances": [["a", "b"], ["c"]]}', 400, None),
        (b'{"instances": [["a", "b"]]}', 400, None),  # rank 2 for a [None] input
        (b'{"inputs": "football"}', 400, None),  # scalar for a [None] input
        (b"\x00\x01\x02", 400, None),
        (b'{"instances": [{"b64": 5}]}', 400, None),
        (b'{"inputs": []}', 200, None),  # empty batch
    ],
    ids=["raw-invalid-utf8", "trailing-bytes", "duplicate-key", "deep-nesting", "nan", "huge-number", "null",
         "ragged", "rank-2", "scalar", "binary", "b64-not-string", "empty-batch"],
)
def test_odd_bodies_get_json_answers(url, body, status, label):
    r = requests.post(url + PREDICT, data=body, timeout=30)
    assert r.status_code == status, r.text[:300]
    assert r.headers["Content-Type"].startswith("application/json")
    if label:
        assert r.json()["predictions"][0]["label"] == label
    elif status == 200:
        assert r.json() == {"outputs": {"probabilities": [], "class_id": [], "label": []}}
    else:
        assert isinstance(r.json()["error"], str) and r.json()["error"]
    assert alive(url)


def test_broken_connections_do_not_kill_the_server(url):
    host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
    for payload in [b"GARBAGE\r\n\r\n", b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nContent-Length: 100\r\n\r\n{",
                    b"GET /v1/models/" + MODEL.encode() + b" HTTP/1.1\r\n"]:
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            try:
                s.recv(1024)
            except OSError:
                pass
    assert alive(url)


def test_client_predict(url):
    results = client.predict(["the football match", b"\xff market shares"], url=url, model=MODEL)
    assert [r["label"] for r in results] == ["sport", "business"]
    assert all(len(r["probabilities"]) == 5 for r in results)
    with pytest.raises(RuntimeError, match="Servable not found"):
        client.predict(["x"], url=url, model="nomodel")
    with pytest.raises(ValueError, match="texts"):
        client.predict([], url=url)


def test_client_cli(url):
    out = subprocess.run([sys.executable, "-m", "serving.client", "--url", url, "--model", MODEL, "film music"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert '"label": "entertainment"' in out.stdout


@dev_only
def test_prometheus_metrics(url):
    requests.post(url + PREDICT, json={"instances": ["a"]}, timeout=10)
    requests.post(url + "/v1/models/nomodel:predict", json={"instances": ["a"]}, timeout=10)
    r = requests.get(url + "/monitoring/prometheus/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    assert f':tensorflow:serving:request_count{{model_name="{MODEL}",status="OK"}}' in r.text
    assert ':tensorflow:serving:request_count{model_name="nomodel",status="NOT_FOUND"}' in r.text
    assert f':tensorflow:serving:request_latency_count{{model_name="{MODEL}",API="predict",entrypoint="REST"}}' in r.text


@dev_only
def test_request_timeout_gives_504(url):
    """In-process server (same code as the subprocess): a timed-out request gets 504 AND stops running."""
    from serving.batching import Batcher, BatchPolicy
    from serving.http_server import ServerThread
    from serving.manager import ModelConfig, ModelManager
    from serving.rest import Api, RestOptions

    manager = ModelManager([ModelConfig(MODEL, _BASE_PATHS[url])], poll_wait_seconds=0)
    manager.poll_once()
    calls = []
    api = Api(manager, batcher=Batcher(BatchPolicy(piece_rows=10)))
    servable = manager.get_servable(MODEL)
    original = servable.predict

    def slow_predict(signature, arrays):
        calls.append(len(arrays["text"]))
        time.sleep(0.05)
        return original(signature, arrays)

    servable.predict = slow_predict
    server = ServerThread(api, RestOptions(port=0, timeout_ms=120))
    try:
        r = requests.post(server.url + PREDICT, json={"instances": ["football match"] * 1000}, timeout=30)
        assert r.status_code == 504 and r.json() == {"error": "Deadline Exceeded"}
        time.sleep(0.3)
        stopped_at = len(calls)
        time.sleep(0.3)
        # The request was cut into 100 pieces of 10; it stopped after a few instead of running all 100.
        assert len(calls) == stopped_at and 1 <= stopped_at < 10, calls
    finally:
        server.stop()
        servable.predict = original


@pytest.mark.parametrize(
    "value,double,text",
    [
        (0.2, False, "0.2"),
        (1.0, False, "1.0"),
        (3.0, True, "3.0"),
        (9e6, False, "9e+06"),
        (3e-05, False, "3e-05"),
        (0.123456789, False, "0.123456791"),  # float32 needs 9 digits to round-trip
        (0.123456789, True, "0.123456789"),
        (1 / 3, True, "0.33333333333333331"),
        (float("nan"), False, "NaN"),
        (float("-inf"), False, "-Infinity"),
    ],
)
def test_float_formatting_matches_tf_serving(value, double, text):
    value = value if double else float(np.float32(value))
    assert format_float(value, double=double) == text


def test_warmup_writer(tmp_path):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from trainer.warmup import write_warmup_requests

    path = write_warmup_requests(str(tmp_path), ["a", b"\xffb", "c"], model_name="m")
    assert path == os.path.join(str(tmp_path), "assets.extra", "tf_serving_warmup_requests")
    batches = []
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog.FromString(record)
        request = log.predict_log.request
        assert (request.model_spec.name, request.model_spec.signature_name) == ("m", "serving_default")
        batches.append(tf.make_ndarray(request.inputs["text"]).tolist())
    assert batches == [[b"a"], [b"\xffb"], [b"c"], [b"a", b"\xffb", b"c"]]
    with pytest.raises(ValueError, match="at most 1000"):
        write_warmup_requests(str(tmp_path), ["x"] * 1000)
    with pytest.raises(ValueError, match="texts"):
        write_warmup_requests(str(tmp_path), [])


def test_cli_help_and_bad_arguments(tmp_path):
    help_text = subprocess.run([sys.executable, "-m", "serving", "--help"], cwd=REPO_ROOT, capture_output=True,
                               text=True, timeout=60).stdout
    for flag in ["--rest_api_port", "--rest_api_host", "--model_name", "--model_base_path", "--model_config_file",
                 "--file_system_poll_wait_seconds", "--rest_api_timeout_in_ms", "--enable_model_warmup",
                 "--max_request_bytes", "--max_num_load_retries", "--load_retry_interval_micros",
                 "--monitoring_config_file"]:
        assert flag in help_text
    bad = subprocess.run([sys.executable, "-m", "serving", "--rest_api_port=1"], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "--model_base_path" in bad.stderr
