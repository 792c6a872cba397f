"""HTTP front end speaking TF Serving's REST API (`/v1/models/...`), on stdlib ThreadingHTTPServer.

Routing follows http_rest_api_util.cc: only `/v1/...` paths reach the JSON handler (anything else gets a plain
404 page like libevent's); POST `.../NAME[/versions/N|/labels/L]:(predict|classify|regress)` and GET
`/v1/models/NAME[/versions/N|/labels/L][/metadata]`; any other /v1 request is 400 "Malformed request: METHOD
PATH". Every JSON response carries Content-Type application/json; errors are `{"error": "<message>"}` with the
status code mapped like TF Serving. The handler never lets an exception escape: unexpected ones become a JSON 500.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import json
import logging
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from serving.json_tensor import (
    ServingError,
    check_classify_regress_body,
    error_body,
    invalid,
    make_predict_response,
    parse_json,
    predict_inputs,
    request_signature_name,
)
from serving.manager import ModelManager

log = logging.getLogger("serving.rest")

_V1_RE = re.compile(r"/v1/.*", re.IGNORECASE)
_POST_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.IGNORECASE
)
_GET_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE
)
_INT64_MAX = 2**63 - 1
_NOT_FOUND_PAGE = (
    b"<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n"
    b"The requested URL was not found on this server.</BODY></HTML>\n"
)


@dataclass(frozen=True)
class RestOptions:
    """Front-end settings (flags of the same names in serving/cli.py)."""

    host: str = "127.0.0.1"
    port: int = 8501
    timeout_ms: int = 30000
    max_request_bytes: int = 32 * 1024 * 1024
    enable_cors: bool = False
    prometheus_path: str | None = None  # set when --monitoring_config_file enables prometheus
    num_threads: int = 32


# ----------------------------------------------------------------------------------------------------------------
# Prometheus metrics (subset of tensorflow_serving/servables/tensorflow/util.cc)

_LATENCY_BUCKETS = [10 * 1.8**k for k in range(33)]


class Metrics:
    """`:tensorflow:serving:request_count` counter and `:tensorflow:serving:request_latency` histogram (µs)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self._latency: dict[tuple[str, str], list] = {}

    def record(self, model: str, api: str, code: str, latency_us: float) -> None:
        with self._lock:
            self._counts[(model, code)] = self._counts.get((model, code), 0) + 1
            if code == "OK":
                buckets, total, count = self._latency.setdefault(
                    (model, api), [[0] * (len(_LATENCY_BUCKETS) + 1), 0.0, 0]
                )
                buckets[bisect.bisect_left(_LATENCY_BUCKETS, latency_us)] += 1
                entry = self._latency[(model, api)]
                entry[1], entry[2] = total + latency_us, count + 1

    def render(self) -> bytes:
        lines = ["# TYPE :tensorflow:serving:request_count counter"]
        with self._lock:
            for (model, code), n in sorted(self._counts.items()):
                lines.append(f':tensorflow:serving:request_count{{model_name="{model}",status="{code}"}} {n}')
            lines.append("# TYPE :tensorflow:serving:request_latency histogram")
            for (model, api), (buckets, total, count) in sorted(self._latency.items()):
                labels = f'model_name="{model}",API="{api}",entrypoint="REST"'
                cumulative = 0
                for bound, n in zip([*_LATENCY_BUCKETS, float("inf")], buckets, strict=True):
                    cumulative += n
                    le = "+Inf" if bound == float("inf") else f"{bound:g}"
                    lines.append(f':tensorflow:serving:request_latency_bucket{{{labels},le="{le}"}} {cumulative}')
                lines.append(f":tensorflow:serving:request_latency_sum{{{labels}}} {total:g}")
                lines.append(f":tensorflow:serving:request_latency_count{{{labels}}} {count}")
        return ("\n".join(lines) + "\n").encode()


# ----------------------------------------------------------------------------------------------------------------
# Request processing (no HTTP details)


def _parse_version(text: str | None) -> int | None:
    if not text:
        return None
    value = int(text)
    if value > _INT64_MAX:
        raise invalid(f"Failed to convert version: {text} to numeric.")
    return value


class Api:
    """Maps (method, path, body) to (HTTP status, JSON bytes); the transport-independent part of the server."""

    def __init__(self, manager: ModelManager, metrics: Metrics | None = None):
        self.manager = manager
        self.metrics = metrics

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        started = time.perf_counter()
        model, api = None, None
        try:
            post = _POST_RE.fullmatch(path) if method == "POST" else None
            get = _GET_RE.fullmatch(path) if method == "GET" else None
            if post:
                model, version_text, label, api = post.groups()
                model = urllib.parse.unquote(model)
                label = urllib.parse.unquote(label) if label else None
                version = _parse_version(version_text)
                api = api.lower()
                if api == "predict":
                    payload = self._predict(model, version, label, body)
                else:
                    payload = self._classify_regress(api, model, version, label, body)
            elif get:
                model, version_text, label, sub = get.groups()
                model = urllib.parse.unquote(model) if model else ""
                label = urllib.parse.unquote(label) if label else None
                version = _parse_version(version_text)
                if not model:
                    raise invalid("Missing model name in request.")
                if sub:
                    result = self.manager.model_metadata(model, version, label)
                else:
                    result = self.manager.model_status(model, version, label)
                payload = json.dumps(result, indent=1).encode()
            else:
                raise invalid(f"Malformed request: {method} {path}")
            status, code = 200, "OK"
        except ServingError as err:
            status, code, payload = err.http_status, err.code, error_body(err.message)
        except RecursionError:
            status, code, payload = 400, "INVALID_ARGUMENT", error_body("Request JSON nested too deeply")
        except Exception as err:  # noqa: BLE001  (never let the handler die)
            log.exception("unexpected error for %s %s", method, path)
            status, code, payload = 500, "INTERNAL", error_body(f"Internal error: {type(err).__name__}: {err}")
        if self.metrics is not None and model and api:
            self.metrics.record(model, api, code, (time.perf_counter() - started) * 1e6)
        return status, payload

    def _predict(self, model, version, label, body: bytes) -> bytes:
        doc = parse_json(body)
        signature_name = request_signature_name(doc)
        servable = self.manager.get_servable(model, version, label)
        inputs = servable.input_dtypes(signature_name)
        arrays, fmt = predict_inputs(doc, inputs, signature_name)
        outputs = servable.predict(signature_name, arrays)
        return make_predict_response(outputs, fmt)

    def _classify_regress(self, api, model, version, label, body: bytes) -> bytes:
        """Same checks the real server makes before it finds the predict-only signature unusable."""
        doc = parse_json(body)
        check_classify_regress_body(doc, api)
        servable = self.manager.get_servable(model, version, label)
        name = request_signature_name(doc) or "serving_default"
        if name not in servable.signature_defs:
            raise invalid(f"No signature was found with the name: {name}")
        signature = servable.signature_defs[name]
        if len(signature.inputs) != 1:
            raise invalid("Expected one input Tensor.")
        n_out = len(signature.outputs)
        if api == "classify" and n_out not in (1, 2):
            raise invalid(f"Expected one or two output Tensors, found {n_out}")
        if api == "regress" and n_out != 1:
            raise invalid("Expected one output Tensor.")
        raise ServingError("UNIMPLEMENTED", f"The dev server does not implement :{api} (tf.Example inputs)")


# ----------------------------------------------------------------------------------------------------------------
# HTTP transport


class _TooLarge(Exception):
    pass


class RestHandler(BaseHTTPRequestHandler):
    """One HTTP/1.1 connection; the server object carries `api`, `options`, `metrics` and an executor."""

    protocol_version = "HTTP/1.1"
    server_version = "bertbc-dev-serving"

    def log_message(self, format, *args):  # noqa: A002  (BaseHTTPRequestHandler's signature)
        log.debug("%s - %s", self.address_string(), format % args)

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")

    def do_PATCH(self):
        self._handle("PATCH")

    def do_HEAD(self):
        self._handle("HEAD")

    def do_OPTIONS(self):
        try:
            self._read_body()
        except Exception:  # noqa: BLE001
            self.close_connection = True
        origin = self.headers.get("Origin", "")
        if re.match(r"https?://", origin):
            headers = {}
            if self.server.options.enable_cors:
                headers = {
                    "Access-Control-Allow-Origin": "*",
                    "Access-Control-Allow-Methods": "POST, GET",
                    "Access-Control-Allow-Headers": "Content-Type",
                }
            self._send(200, b"", "text/plain", headers)
        else:
            self._send(400, error_body("Origin header is missing in CORS preflight"), "application/json")

    # -- body ------------------------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        limit = self.server.options.max_request_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                chunk = self.rfile.read(size)
                self.rfile.readline()
                if total <= limit:
                    parts.append(chunk)
            if total > limit:
                raise _TooLarge(total)
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        if length > limit:
            remaining = length  # drain so the client can read our answer instead of a reset
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                remaining -= len(chunk)
            raise _TooLarge(length)
        return self.rfile.read(length) if length else b""

    # -- dispatch --------------------------------------------------------------------------------------------

    def _handle(self, method: str) -> None:
        try:
            path = urllib.parse.urlsplit(self.path).path
            options: RestOptions = self.server.options
            try:
                body = self._read_body()
            except _TooLarge as err:
                self.close_connection = True
                message = (
                    f"Request body of {err.args[0]} bytes exceeds the dev server limit --max_request_bytes="
                    f"{options.max_request_bytes}; send smaller batches."
                )
                self._send(413, error_body(message), "application/json")
                return
            if options.prometheus_path and path == options.prometheus_path and method == "GET":
                self._send(200, self.server.metrics.render(), "text/plain; version=0.0.4")
                return
            if not _V1_RE.fullmatch(path):
                self._send(404, _NOT_FOUND_PAGE, "text/html")
                return
            future = self.server.executor.submit(self.server.api.handle, method, path, body)
            try:
                status, payload = future.result(timeout=options.timeout_ms / 1000.0)
            except concurrent.futures.TimeoutError:
                status, payload = 504, error_body("Deadline Exceeded")
            self._send(status, payload, "application/json")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as err:  # noqa: BLE001  (the handler must never die)
            log.exception("request handling failed")
            self.close_connection = True
            try:
                self._send(500, error_body(f"Internal error: {type(err).__name__}: {err}"), "application/json")
            except Exception:  # noqa: BLE001
                pass

    def _send(self, status: int, payload: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        if self.server.options.enable_cors:
            self.send_header("Access-Control-Allow-Origin", "*")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


class RestServer(ThreadingHTTPServer):
    """ThreadingHTTPServer holding the Api, options, metrics and the worker pool that enforces timeouts."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, api: Api, options: RestOptions, metrics: Metrics | None = None):
        self.api = api
        self.options = options
        self.metrics = metrics or Metrics()
        self.executor = concurrent.futures.ThreadPoolExecutor(options.num_threads, thread_name_prefix="rest")
        super().__init__((options.host, options.port), RestHandler)

    def server_close(self):
        super().server_close()
        self.executor.shutdown(wait=False, cancel_futures=True)


def make_server(manager: ModelManager, options: RestOptions) -> RestServer:
    """Binds the REST server (not yet serving: call serve_forever())."""
    metrics = Metrics()
    return RestServer(Api(manager, metrics if options.prometheus_path else None), options, metrics)
