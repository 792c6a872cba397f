"""Command line of the dev server, with tensorflow_model_server's flag names where they apply.

Flags accept both `--flag=value` and `--flag value`; booleans accept `--flag`, `--flag=true|false|1|0`.
Like the real server (server.cc BuildAndStart), the initial models are loaded BEFORE the REST port accepts
connections: the port is bound at once (so a taken port fails fast) but refuses connections until every
configured model has a version AVAILABLE. If one ends without ever becoming available the server exits 255
with "Failed to start server. Error: UNKNOWN: N model(s) did not become available: ...".

Differences from the real server (by design, for a safe local dev loop):
  * binds 127.0.0.1 by default (`--rest_api_host`); the real server binds 0.0.0.0.
  * `--load_retry_interval_micros` defaults to 1 s (real: 60 s); `--file_system_poll_wait_seconds` accepts
    fractions (real: integer seconds).
  * only REST; `--port` (gRPC) is accepted and ignored with a warning.
  * batching checks request sizes and splits like the real server but does not merge concurrent requests
    (serving/batching.py).
  * `--max_request_bytes` and `--idle_connection_timeout_seconds` are dev-only (413 / connection closed).
  * error bodies are always valid UTF-8 (request bytes that are not become U+FFFD); HTTP/1.0 requests get an
    HTTP/1.1 status line (keep-alive is honoured as libevent does).
  * TensorFlow's C++ start-up messages are hidden (serving/quiet.py); `-v` shows them.

Version labels and `--model_config_file_poll_wait_seconds` follow server_core.cc exactly: see serving/labels.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading

log = logging.getLogger("serving")


def _bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _add_bool(parser, name: str, default: bool, help_text: str) -> None:
    parser.add_argument(name, type=_bool, nargs="?", const=True, default=default,
                        help=f"{help_text} (default: {str(default).lower()})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m serving",
        description="Dev server speaking TensorFlow Serving's REST API for SavedModels under <base>/<int>/. "
        "Flags are named like tensorflow_model_server's.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--rest_api_port", type=int, default=8501, help="Port for the HTTP/REST API.")
    p.add_argument("--rest_api_host", default="127.0.0.1",
                   help="Bind address. The real server binds 0.0.0.0; use that only inside a container/VM.")
    p.add_argument("--model_name", default="default",
                   help="Name of the model (URL /v1/models/NAME). Ignored with --model_config_file.")
    p.add_argument("--model_base_path", default="",
                   help="Folder holding numbered version folders <base>/<N>/saved_model.pb. "
                   "Ignored with --model_config_file.")
    p.add_argument("--model_config_file", default="",
                   help="Text-format ModelServerConfig (model_config_list: name, base_path, model_platform, "
                   "model_version_policy latest{num_versions}/all{}/specific{versions}, version_labels).")
    p.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0,
                   help="Re-read --model_config_file this often (0 = read once at startup) and apply it like the "
                   "real server: version labels first (a label may only move to an AVAILABLE version, else the "
                   "whole reload is refused and logged), then the model list (new versions load, versions no "
                   "longer listed unload once an aspired one is AVAILABLE).")
    _add_bool(p, "--allow_version_labels_for_unavailable_models", False,
              "Allow a NEW version label (or one keeping its version) to name a version that is not AVAILABLE yet; "
              "needed for labels in the config at start-up. Moving an existing label still needs an AVAILABLE "
              "version")
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                   help="Seconds between polls of the base paths for new/removed versions (0 = poll once).")
    p.add_argument("--rest_api_timeout_in_ms", type=int, default=30000,
                   help="Per-request timeout; a slower request gets 504 {\"error\": \"Deadline Exceeded\"}.")
    p.add_argument("--rest_api_num_threads", type=int, default=32,
                   help="Worker threads running requests (connections are accepted by their own threads).")
    _add_bool(p, "--rest_api_enable_cors_support", False, "Add CORS headers to responses")
    _add_bool(p, "--enable_model_warmup", True,
              "Replay <version>/assets.extra/tf_serving_warmup_requests at load; a failure fails the load")
    p.add_argument("--num_request_iterations_for_warmup", type=int, default=1,
                   help="How many times each warmup record is replayed.")
    p.add_argument("--max_num_load_retries", type=int, default=5,
                   help="Retries after a failed version load before giving up (0 = load once).")
    p.add_argument("--load_retry_interval_micros", type=int, default=1_000_000,
                   help="Microseconds between load retries (real server default: 60000000).")
    p.add_argument("--max_request_bytes", type=int, default=32 * 1024 * 1024,
                   help="Dev-only request body limit; larger bodies get 413 with a JSON error.")
    p.add_argument("--idle_connection_timeout_seconds", type=float, default=50.0,
                   help="Dev-only: close a connection that sends nothing for this long (libevent's HTTP read "
                   "timeout is 50 s); a request body that stalls this long gets 408.")
    p.add_argument("--monitoring_config_file", default="",
                   help="MonitoringConfig text proto; prometheus_config {enable: true, path: \"...\"} serves "
                   "request_count and request_latency at that path (default /monitoring/prometheus/metrics).")
    p.add_argument("--port", type=int, default=None, help="gRPC port of the real server: accepted, ignored.")
    _add_bool(p, "--enable_batching", False,
              "Server-side batching: requests with more rows than max_batch_size get 400 \"Task size N is "
              "larger than maximum input batch size M\"; with enable_large_batch_splitting they run in pieces")
    p.add_argument("--batching_parameters_file", default="",
                   help="BatchingParameters text proto (max_batch_size, num_batch_threads, allowed_batch_sizes, "
                   "enable_large_batch_splitting, max_execution_batch_size, ...). Needs --enable_batching.")
    p.add_argument("--log_level", default="INFO", help="Python logging level.")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="Show TensorFlow's C++ start-up messages (CUDA probing, CPU features), hidden by default.")
    return p


def parse_monitoring_config(path: str) -> str | None:
    """Returns the Prometheus path if the MonitoringConfig text proto enables it, else None."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    block = re.search(r"prometheus_config\s*:?\s*\{([^}]*)\}", text)
    if not block or not re.search(r"\benable\s*:\s*true\b", block.group(1)):
        return None
    path_match = re.search(r"\bpath\s*:\s*[\"']([^\"']*)[\"']", block.group(1))
    return (path_match.group(1) if path_match else "") or "/monitoring/prometheus/metrics"


def _configs(args):
    from serving.manager import ModelConfig, load_model_config_file

    if args.model_config_file:
        return load_model_config_file(args.model_config_file)
    if not args.model_base_path:
        raise ValueError("set --model_base_path (with --model_name) or --model_config_file")
    return [ModelConfig(name=args.model_name, base_path=os.path.abspath(args.model_base_path))]


def _batch_policy(args):
    from serving.batching import BatchPolicy, load_batching_parameters

    if args.batching_parameters_file and not args.enable_batching:
        raise ValueError("server_options.batching_parameters_file is set without setting "
                         "server_options.enable_batching to true.")
    if not args.enable_batching:
        return BatchPolicy()
    if not args.batching_parameters_file:
        return BatchPolicy(input_limit=1000, piece_rows=1000, num_threads=os.cpu_count() or 1)
    return load_batching_parameters(args.batching_parameters_file)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from serving.batching import Batcher
    from serving.http_server import bind_socket, make_uvicorn_server
    from serving.json_tensor import ServingError
    from serving.manager import LoadOptions, ModelManager
    from serving.metrics import Metrics
    from serving.quiet import import_tensorflow
    from serving.rest import Api, RestOptions

    try:
        configs = _configs(args)
        prometheus_path = parse_monitoring_config(args.monitoring_config_file) if args.monitoring_config_file else None
        policy = _batch_policy(args)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.port is not None:
        log.warning("--port (gRPC) is ignored by the dev server (REST only)")
    try:
        sock = bind_socket(args.rest_api_host, args.rest_api_port, listen=False)
    except OSError as err:
        print(f"error: cannot bind {args.rest_api_host}:{args.rest_api_port}: {err}", file=sys.stderr)
        return 2
    try:
        manager = ModelManager(
            configs,
            LoadOptions(
                enable_model_warmup=args.enable_model_warmup,
                num_request_iterations_for_warmup=args.num_request_iterations_for_warmup,
                max_num_load_retries=max(0, args.max_num_load_retries),
                load_retry_interval_s=max(0.0, args.load_retry_interval_micros / 1e6),
            ),
            poll_wait_seconds=args.file_system_poll_wait_seconds,
            allow_labels_for_unavailable=args.allow_version_labels_for_unavailable_models,
        )
    except ServingError as err:  # ServerCore::Create -> ReloadConfig refused the first config
        sock.close()
        print(f"Failed to start server. Error: {err.to_string()}", file=sys.stderr)
        return 255
    import_tensorflow(verbose=args.verbose)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda signum, _frame: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        manager.start()
        failure = manager.wait_until_models_available(stop)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if failure:
            print(f"Failed to start server. Error: UNKNOWN: {failure}", file=sys.stderr)
            return 255
        if failure == "":
            log.info("Stopped before the initial models were available")
            return 0
        if args.model_config_file and args.model_config_file_poll_wait_seconds > 0:
            threading.Thread(target=_reload_config, args=(manager, args, stop), daemon=True).start()
        options = RestOptions(
            host=args.rest_api_host, port=args.rest_api_port, timeout_ms=args.rest_api_timeout_in_ms,
            max_request_bytes=args.max_request_bytes, enable_cors=args.rest_api_enable_cors_support,
            prometheus_path=prometheus_path, num_threads=max(1, args.rest_api_num_threads),
            idle_timeout_s=max(0.1, args.idle_connection_timeout_seconds),
        )
        api = Api(manager, Metrics() if prometheus_path else None, Batcher(policy))
        server = make_uvicorn_server(api, options)
        sock.listen(1024)
        log.info("Exporting HTTP/REST API at:%s:%d ...", args.rest_api_host, sock.getsockname()[1])
        server.run(sockets=[sock])  # uvicorn handles SIGINT/SIGTERM: graceful stop
        return 0
    finally:
        stop.set()
        manager.stop()
        sock.close()


def _reload_config(manager, args, stop: threading.Event) -> None:
    """Server::PollFilesystemAndReloadConfig: a file that does not parse, or a reload the server refuses, is
    logged and changes nothing; the next poll tries again."""
    from serving.json_tensor import ServingError
    from serving.manager import load_model_config_file

    while not stop.wait(args.model_config_file_poll_wait_seconds):
        try:
            configs = load_model_config_file(args.model_config_file)
        except (OSError, ValueError) as err:
            log.error("Failed to read ModelServerConfig file: %s", err)
            continue
        try:
            manager.reload_config(configs)
        except ServingError as err:
            log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", err.message)
