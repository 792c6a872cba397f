"""TF Serving's REST API (`/v1/models/...`) as (method, path, body) -> (HTTP status, JSON), with no HTTP details.

The HTTP transport is serving/http_server.py. Routing follows http_rest_api_util.cc: only `/v1/...` paths reach the JSON handler (anything else gets a plain
404 page like libevent's); POST `.../NAME[/versions/N|/labels/L]:(predict|classify|regress)` and GET
`/v1/models/NAME[/versions/N|/labels/L][/metadata]`; any other /v1 request is 400 "Malformed request: METHOD
PATH". Every JSON response carries Content-Type application/json; errors are `{"error": "<message>"}` with the
status code mapped like TF Serving. The handler never lets an exception escape: unexpected ones become a JSON 500.
A label resolves through the manager's label map (serving/labels.py); the status route ignores it, like
GetModelStatusImpl.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass

from serving.batching import Batcher
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
from serving.metrics import Metrics

log = logging.getLogger("serving.rest")

_POST_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.IGNORECASE
)
_GET_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE
)
_INT64_MAX = 2**63 - 1


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
    idle_timeout_s: float = 50.0


# ----------------------------------------------------------------------------------------------------------------
# Request processing (no HTTP details)


def _parse_version(text: str | None) -> int | None:
    """absl::SimpleAtoi into int64: leading zeros are accepted at any length (`000…0003` is version 3), a value
    above int64 is a 400. Zeros are stripped and the length checked before int(), which refuses strings of more
    than 4,300 digits (Python's int max_str_digits)."""
    if not text:
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > 19 or int(digits) > _INT64_MAX:
        raise invalid(f"Failed to convert version: {text} to numeric.")
    return int(digits)


class Api:
    """Maps (method, path, body) to (HTTP status, JSON bytes); the transport-independent part of the server."""

    def __init__(self, manager: ModelManager, metrics: Metrics | None = None, batcher: Batcher | None = None):
        self.manager = manager
        self.metrics = metrics
        self.batcher = batcher or Batcher()

    def handle(self, method: str, path: str, body: bytes, cancelled: threading.Event | None = None) -> tuple[int, bytes]:
        """One /v1 request. `cancelled` (set by the transport at the deadline) stops a predict between batches."""
        started = time.perf_counter()
        model, api = "", ""
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
                    payload = self._predict(model, version, label, body, cancelled)
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
                    result = self.manager.model_status(model, version)  # ignores a label, like the real server
                payload = json.dumps(result, indent=1).encode()
            else:
                raise invalid(f"Malformed request: {method} {path}")
            status, code = 200, "OK"
        except ServingError as err:
            status, code, payload = err.http_status, err.code, error_body(err.message)
        except RecursionError:
            status, code, payload = 400, "INVALID_ARGUMENT", error_body("Request JSON nested too deeply")
        except MemoryError:
            status, code, payload = 429, "RESOURCE_EXHAUSTED", error_body("Out of memory while serving the request")
        except Exception as err:  # noqa: BLE001  (never let the handler die)
            log.exception("unexpected error for %s %s", method, path)
            status, code, payload = 500, "INTERNAL", error_body(f"Internal error: {type(err).__name__}: {err}")
        if self.metrics is not None:
            self.metrics.record_request(model, api, code, (time.perf_counter() - started) * 1e6)
        return status, payload

    def _predict(self, model, version, label, body: bytes, cancelled: threading.Event | None) -> bytes:
        doc = parse_json(body)
        signature_name = request_signature_name(doc)
        servable = self.manager.get_servable(model, version, label)
        inputs = servable.input_dtypes(signature_name)
        arrays, fmt = predict_inputs(doc, inputs, signature_name)
        del doc  # the parsed JSON can be much larger than the arrays; free it before running the model

        def run(piece):
            run_started = time.perf_counter()
            result = servable.predict(signature_name, piece)
            if self.metrics is not None:
                self.metrics.record_runtime(model, (time.perf_counter() - run_started) * 1e6)
            return result

        outputs = self.batcher.run(run, arrays, cancelled)
        return make_predict_response(outputs, fmt)

    def _classify_regress(self, api, model, version, label, body: bytes) -> bytes:
        """Same checks the real server makes before it finds the predict-only signature unusable."""
        doc = parse_json(body)
        check_classify_regress_body(doc, api)
        servable = self.manager.get_servable(model, version, label)
        name = request_signature_name(doc) or "serving_default"
        if not servable.has_signature(name):
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


