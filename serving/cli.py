"""Command line of the dev server, with tensorflow_model_server's flag names where they apply.

Flags accept both `--flag=value` and `--flag value`; booleans accept `--flag`, `--flag=true|false|1|0`.
Differences from the real server (by design, for a safe local dev loop):
  * binds 127.0.0.1 by default (`--rest_api_host`); the real server binds 0.0.0.0.
  * the REST port opens BEFORE the model is loaded; until then predict answers 404
    "Servable not found for request: Latest(NAME)" and status 404 "Could not find any versions of model NAME"
    (the real server keeps the port closed until the first version is AVAILABLE).
  * `--load_retry_interval_micros` defaults to 1 s (real: 60 s); `--file_system_poll_wait_seconds` accepts
    fractions (real: integer seconds).
  * only REST; `--port` (gRPC) and batching flags are accepted and ignored with a warning.
  * `--max_request_bytes` is dev-only (413 JSON error); the real server has its own HTTP limits.
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
                   help="Re-read --model_config_file this often (0 = read once at startup).")
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
    p.add_argument("--monitoring_config_file", default="",
                   help="MonitoringConfig text proto; prometheus_config {enable: true, path: \"...\"} serves "
                   "request_count and request_latency at that path (default /monitoring/prometheus/metrics).")
    p.add_argument("--port", type=int, default=None, help="gRPC port of the real server: accepted, ignored.")
    _add_bool(p, "--enable_batching", False, "Accepted for command-line compatibility; ignored")
    p.add_argument("--batching_parameters_file", default="", help="Accepted for compatibility; ignored.")
    p.add_argument("--log_level", default="INFO", help="Python logging level.")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from serving.manager import LoadOptions, ModelManager
    from serving.rest import RestOptions, make_server

    try:
        configs = _configs(args)
        prometheus_path = parse_monitoring_config(args.monitoring_config_file) if args.monitoring_config_file else None
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.port is not None or args.enable_batching or args.batching_parameters_file:
        log.warning("--port/--enable_batching/--batching_parameters_file are ignored by the dev server (REST only)")
    manager = ModelManager(
        configs,
        LoadOptions(
            enable_model_warmup=args.enable_model_warmup,
            num_request_iterations_for_warmup=args.num_request_iterations_for_warmup,
            max_num_load_retries=max(0, args.max_num_load_retries),
            load_retry_interval_s=max(0.0, args.load_retry_interval_micros / 1e6),
        ),
        poll_wait_seconds=args.file_system_poll_wait_seconds,
    )
    options = RestOptions(
        host=args.rest_api_host, port=args.rest_api_port, timeout_ms=args.rest_api_timeout_in_ms,
        max_request_bytes=args.max_request_bytes, enable_cors=args.rest_api_enable_cors_support,
        prometheus_path=prometheus_path, num_threads=max(1, args.rest_api_num_threads),
    )
    try:
        server = make_server(manager, options)
    except OSError as err:
        print(f"error: cannot bind {args.rest_api_host}:{args.rest_api_port}: {err}", file=sys.stderr)
        return 2
    manager.start()
    stop = threading.Event()
    if args.model_config_file and args.model_config_file_poll_wait_seconds > 0:
        threading.Thread(target=_reload_config, args=(manager, args, stop), daemon=True).start()

    def _shutdown(signum, _frame):
        log.info("Received signal %d, shutting down", signum)
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _shutdown)
    signal.signal(signal.SIGINT, _shutdown)
    log.info("Exporting HTTP/REST API at:%s:%d ...", args.rest_api_host, server.server_address[1])
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        manager.stop()
        server.server_close()
    return 0


def _reload_config(manager, args, stop: threading.Event) -> None:
    from serving.manager import load_model_config_file

    while not stop.wait(args.model_config_file_poll_wait_seconds):
        try:
            manager.set_configs(load_model_config_file(args.model_config_file))
        except (OSError, ValueError) as err:
            log.error("Failed to reload --model_config_file: %s", err)
