"""Model version discovery, loading/unloading and status, shaped like TF Serving's ServerCore.

A background thread polls each model's base path every `poll_wait_seconds`. Children whose name is an integer
(`1`, `0001`; not `1.tmp` or `.tmp-3-123`) are versions; the model_version_policy (latest N / all / specific)
picks the aspired ones. Like AvailabilityPreservingPolicy, the newest aspired version is loaded (and warmed up)
BEFORE an old version is unloaded, so a version that fails to load leaves the previous one serving. A failed
load is retried `max_num_load_retries` times, `load_retry_interval_s` apart, then given up (state END with the
error) until its folder disappears. Version states are never forgotten, like ServableStateMonitor.

`reload_config` is ServerCore::ReloadConfig for a model_config_list: the version labels are checked and swapped
first (serving/labels.py; a refused label rejects the whole reload), then the model list is replaced and the
poller loads newly aspired versions and unloads the ones no longer aspired, in the order above.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from serving.json_tensor import DEFAULT_SIGNATURE, ServingError, invalid
from serving.labels import LabelMap, build_label_map, version_for_label

log = logging.getLogger("serving.manager")

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # WarmupConsts::kMaxNumRecords
_VERSION_RE = re.compile(r"^[+-]?[0-9]+$")
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class ModelConfig:
    """One served model (a ModelConfig entry of ModelServerConfig).

    Attributes:
      name: model name used in URLs.
      base_path: folder holding `<int>` version folders.
      policy: "latest", "all" or "specific".
      num_versions: for "latest".
      versions: for "specific".
      labels: version label -> version (version_labels).
    """

    name: str
    base_path: str
    policy: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()
    labels: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if not self.name:
            raise ValueError("model name must not be empty")
        if self.policy not in ("latest", "all", "specific"):
            raise ValueError(f"policy must be latest, all or specific, got {self.policy!r}")
        if self.policy == "latest" and self.num_versions < 1:
            raise ValueError(f"num_versions must be >= 1, got {self.num_versions}")


def load_model_config_file(path: str) -> list[ModelConfig]:
    """Parses a text-format ModelServerConfig (the --model_config_file of tensorflow_model_server)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        proto = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as err:
        raise ValueError(f"--model_config_file {path}: {err}") from None
    if proto.WhichOneof("config") != "model_config_list":
        raise ValueError(f"--model_config_file {path}: only model_config_list is supported")
    configs = []
    for entry in proto.model_config_list.config:
        if entry.model_platform not in ("", "tensorflow"):
            raise ValueError(f"model {entry.name}: model_platform must be 'tensorflow', got {entry.model_platform!r}")
        policy = entry.model_version_policy.WhichOneof("policy_choice") or "latest"
        base = entry.base_path
        if not os.path.isabs(base):
            base = os.path.join(os.path.dirname(os.path.abspath(path)), base)
        configs.append(
            ModelConfig(
                name=entry.name,
                base_path=base,
                policy=policy,
                num_versions=entry.model_version_policy.latest.num_versions or 1,
                versions=tuple(entry.model_version_policy.specific.versions),
                labels=dict(entry.version_labels),
            )
        )
    return configs


def scan_versions(base_path: str) -> dict[int, str]:
    """Version number -> folder for children of `base_path` whose name is an integer (absl::SimpleAtoi)."""
    try:
        names = sorted(os.listdir(base_path))
    except OSError:
        return {}
    found: dict[int, str] = {}
    for name in names:
        if not _VERSION_RE.match(name) or abs(int(name)) > _INT64_MAX:
            continue
        version = int(name)
        if version in found:
            log.warning("Duplicate version directories detected: %s and %s", found[version], name)
            continue
        found[version] = os.path.join(base_path, name)
    return found


def aspired_versions(found: dict[int, str], config: ModelConfig) -> dict[int, str]:
    """Applies the model_version_policy to the versions on disk."""
    if config.policy == "all":
        return dict(found)
    if config.policy == "specific":
        return {v: p for v, p in found.items() if v in config.versions}
    newest = sorted(found, reverse=True)[: config.num_versions]
    return {v: found[v] for v in newest}


# ----------------------------------------------------------------------------------------------------------------
# A loaded version


def _status_from_exception(err: BaseException) -> ServingError:
    """Maps TF / Python exceptions to a canonical status."""
    if isinstance(err, ServingError):
        return err
    import tensorflow as tf
    from tensorflow.core.protobuf import error_codes_pb2

    if isinstance(err, tf.errors.OpError):
        return ServingError(error_codes_pb2.Code.Name(err.error_code), err.message)
    if isinstance(err, (TypeError, ValueError)):
        return invalid(str(err))
    return ServingError("UNKNOWN", f"{type(err).__name__}: {err}")


class Servable:
    """One loaded SavedModel version: the tf object plus its SignatureDefs (for metadata and input dtypes)."""

    def __init__(self, name: str, version: int, path: str):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (registers the TF-Text ops the exported model uses)
        from tensorflow.core.protobuf import saved_model_pb2

        self.name, self.version, self.path = name, version, path
        pb_path = os.path.join(path, "saved_model.pb")
        if not os.path.isfile(pb_path):
            raise ServingError(
                "NOT_FOUND",
                f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path}",
            )
        saved = saved_model_pb2.SavedModel()
        try:
            with open(pb_path, "rb") as f:
                saved.ParseFromString(f.read())
        except Exception:  # noqa: BLE001  (protobuf raises DecodeError or RuntimeWarning-ish errors)
            raise ServingError("DATA_LOSS", f"Can't parse {pb_path} as binary proto") from None
        if not saved.meta_graphs:
            raise ServingError("DATA_LOSS", f"SavedModel at {path} has no MetaGraphDef")
        self.signature_defs = saved.meta_graphs[0].signature_def
        try:
            self.loaded = tf.saved_model.load(path)
        except Exception as err:  # noqa: BLE001
            raise _status_from_exception(err) from None
        self._tf = tf

    def has_signature(self, name: str) -> bool:
        """Whether the SignatureDefMap has `name`. A request's name may hold raw non-UTF-8 bytes or a lone
        surrogate (rapidjson accepts both); no key can equal it, and protobuf's map cannot even encode it."""
        try:
            return name in self.signature_defs
        except UnicodeEncodeError:
            return False

    def input_dtypes(self, signature_name: str) -> dict[str, str]:
        """Input alias -> DataType enum name, or ServingError for an unknown signature (GetInfoMap)."""
        from tensorflow.core.framework import types_pb2

        name = signature_name or DEFAULT_SIGNATURE
        if not self.has_signature(name):
            raise invalid(f'Serving signature name: "{name}" not found in signature def')
        return {k: types_pb2.DataType.Name(v.dtype) for k, v in self.signature_defs[name].inputs.items()}

    def predict(self, signature_name: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs a signature on numpy inputs (DT_STRING as object arrays of bytes); outputs as numpy arrays."""
        tf = self._tf
        name = signature_name or DEFAULT_SIGNATURE
        if not self.has_signature(name) or name not in self.loaded.signatures:
            raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{name}" not found.')
        signature = self.signature_defs[name]
        expected, sent = set(signature.inputs), set(arrays)
        if sent != expected:
            raise invalid(
                f"input size does not match signature: {len(sent)}!={len(expected)} len({{{','.join(sorted(sent))}}})"
                f" != len({{{','.join(sorted(expected))}}}). Sent extra: {{{','.join(sorted(sent - expected))}}}."
                f" Missing but required: {{{','.join(sorted(expected - sent))}}}."
            )
        tensors = {}
        for key, array in arrays.items():
            # Checked here because some ops abort the whole process on an unexpected rank (dev-server addition:
            # the real server feeds the tensor to the graph and reports whatever the graph says).
            spec = signature.inputs[key].tensor_shape
            dims = [d.size for d in spec.dim]
            if not spec.unknown_rank and (
                len(dims) != array.ndim or any(d >= 0 and d != s for d, s in zip(dims, array.shape, strict=False))
            ):
                raise invalid(
                    f"Input {key} has shape {list(array.shape)}, not compatible with the signature's shape {dims}"
                )
            dtype = tf.dtypes.as_dtype(signature.inputs[key].dtype)
            tensors[key] = tf.constant(array, dtype=dtype) if dtype == tf.string else tf.convert_to_tensor(array, dtype)
        try:
            outputs = self.loaded.signatures[name](**tensors)
            return {k: v.numpy() for k, v in outputs.items()}
        except Exception as err:  # noqa: BLE001
            raise _status_from_exception(err) from None

    def metadata_signature_defs(self) -> dict:
        """SignatureDefMap as proto-JSON (preserving field names, defaults cleared as since TF Serving 2.20)."""
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in self.signature_defs.items():
            sig_map.signature_def[key].CopyFrom(sig)
            sig_map.signature_def[key].ClearField("defaults")
        return json_format.MessageToDict(
            sig_map, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )

    def run_warmup(self, iterations: int = 1) -> int:
        """Replays assets.extra/tf_serving_warmup_requests; any failure fails the load. Returns #records."""
        from tensorflow_serving.apis import prediction_log_pb2

        tf = self._tf
        path = os.path.join(self.path, WARMUP_FILE)
        if not os.path.exists(path):
            log.info("No warmup data file found at %s", path)
            return 0
        log.info("Starting to read warmup data for model at %s with model name: %s", path, self.name)
        count = 0
        try:
            records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
        except tf.errors.OpError as err:
            raise ServingError(
                "DATA_LOSS",
                f"Error reading warmup data {path}: {err.message}. Please verify your warmup data is in TFRecord "
                "format.",
            ) from None
        for record in records:
            count += 1
            if count > MAX_WARMUP_RECORDS:
                raise invalid(f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
            log_entry = prediction_log_pb2.PredictionLog()
            try:
                log_entry.ParseFromString(record)
            except Exception:  # noqa: BLE001
                raise ServingError("DATA_LOSS", f"Failed to parse PredictionLog from {path}") from None
            kind = log_entry.WhichOneof("log_type")
            if kind != "predict_log":
                raise ServingError("UNIMPLEMENTED", f"Unsupported log_type for warmup in the dev server: {kind}")
            request = log_entry.predict_log.request
            arrays = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            for _ in range(max(1, iterations)):
                self.predict(request.model_spec.signature_name, arrays)
        log.info("Finished reading warmup data for model at %s. Number of warmup records read: %d.", path, count)
        return count


# ----------------------------------------------------------------------------------------------------------------
# The manager


@dataclass
class VersionState:
    state: str = "START"  # START, LOADING, AVAILABLE, UNLOADING, END
    error_code: str = "OK"
    error_message: str = ""


@dataclass
class _Attempt:
    failures: int = 0
    next_time: float = 0.0
    given_up: bool = False


@dataclass(frozen=True)
class LoadOptions:
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1
    max_num_load_retries: int = 5
    load_retry_interval_s: float = 1.0


class ModelManager:
    """Keeps the aspired versions of every configured model loaded; thread-safe lookups for request handlers."""

    def __init__(self, configs: list[ModelConfig], options: LoadOptions = LoadOptions(), poll_wait_seconds=1.0,
                 *, allow_labels_for_unavailable: bool = False):
        """Raises ServingError like the real server's start-up (duplicate names, labels it may not set)."""
        self._options = options
        self._poll_wait = poll_wait_seconds
        self._allow_labels_for_unavailable = allow_labels_for_unavailable
        self._lock = threading.Lock()
        self._configs: dict[str, ModelConfig] = {}
        self._labels: LabelMap = {}
        self._loaded: dict[str, dict[int, Servable]] = {}
        self._states: dict[str, dict[int, VersionState]] = {}
        self._attempts: dict[tuple[str, int], _Attempt] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_empty: set[str] = set()
        self.reload_config(configs)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Polls once in a background thread, then every poll_wait_seconds (> 0) until stop()."""
        self._thread = threading.Thread(target=self._run, name="version-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001  (the poller must survive anything)
                log.exception("version poll failed")
            if self._poll_wait <= 0:
                return
            self._stop.wait(self._poll_wait)

    def reload_config(self, configs: list[ModelConfig]) -> None:
        """Applies a new model list (ServerCore::ReloadConfig), or raises ServingError and changes nothing.

        Labels are checked against the versions AVAILABLE now and swapped in one step, before the model list
        changes; versions newly aspired are loaded, and versions no longer aspired unloaded, by the poller.
        """
        names = [c.name for c in configs]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise invalid(f"Illegal to list model {name} multiple times in config list")
        with self._lock:
            available = {n: {v for v, s in states.items() if s.state == "AVAILABLE"} for n, states in self._states.items()}
            self._labels = build_label_map(((c.name, c.labels) for c in configs), available, self._labels,
                                           allow_unavailable=self._allow_labels_for_unavailable)
            self._configs = {c.name: c for c in configs}
            for c in configs:
                self._loaded.setdefault(c.name, {})
                self._states.setdefault(c.name, {})

    # -- polling -----------------------------------------------------------------------------------------------

    def poll_once(self) -> None:
        with self._lock:
            configs = dict(self._configs)
            names = list(self._loaded)
        for name in names:
            config = configs.get(name)
            aspired = {}
            if config is not None:
                found = scan_versions(config.base_path)
                if not found and name not in self._warned_empty:
                    log.warning(
                        "No versions of servable %s found under base path %s. Did you forget to name your leaf "
                        "directory as a number (eg. '/1/')?", name, config.base_path,
                    )
                    self._warned_empty.add(name)
                elif found:
                    self._warned_empty.discard(name)
                aspired = aspired_versions(found, config)
            self._reconcile(name, aspired)

    def _reconcile(self, name: str, aspired: dict[int, str]) -> None:
        """AvailabilityPreservingPolicy: unload un-aspired versions only when safe, load the newest new one."""
        for key in [k for k in self._attempts if k[0] == name and k[1] not in aspired]:
            del self._attempts[key]  # a version whose folder went away may be retried if it comes back
        with self._lock:
            for version, state in self._states[name].items():
                if version not in aspired and state.state in ("START", "LOADING"):
                    state.state = "END"
        tried: set[int] = set()
        while True:
            with self._lock:
                loaded = set(self._loaded[name])
            aspired_ready = any(v in loaded for v in aspired)
            unaspired_ready = sorted(v for v in loaded if v not in aspired)
            if unaspired_ready and (not aspired or aspired_ready or len(unaspired_ready) > 1):
                self._unload(name, unaspired_ready[0])
                continue
            now = time.monotonic()
            candidates = [
                v for v in aspired
                if v not in loaded and v not in tried
                and not self._attempts.get((name, v), _Attempt()).given_up
                and self._attempts.get((name, v), _Attempt()).next_time <= now
            ]
            if not candidates:
                return
            version = max(candidates)
            tried.add(version)
            self._load(name, version, aspired[version])

    def _set_state(self, name: str, version: int, state: str, error: ServingError | None = None) -> None:
        with self._lock:
            entry = self._states[name].setdefault(version, VersionState())
            entry.state = state
            if error is not None:
                entry.error_code, entry.error_message = error.code, error.message
            elif state in ("LOADING", "AVAILABLE"):
                entry.error_code, entry.error_message = "OK", ""

    def _load(self, name: str, version: int, path: str) -> None:
        attempt = self._attempts.setdefault((name, version), _Attempt())
        self._set_state(name, version, "LOADING")
        log.info("Loading servable version {name: %s version: %d} from %s", name, version, path)
        try:
            servable = Servable(name, version, path)
            if self._options.enable_model_warmup:
                servable.run_warmup(self._options.num_request_iterations_for_warmup)
        except Exception as err:  # noqa: BLE001
            status = _status_from_exception(err)
            attempt.failures += 1
            if attempt.failures > self._options.max_num_load_retries:
                attempt.given_up = True
                log.error("Loading servable {name: %s version: %d} failed: %s", name, version, status.message)
                self._set_state(name, version, "END", status)
            else:
                attempt.next_time = time.monotonic() + self._options.load_retry_interval_s
                log.warning("Loading servable {name: %s version: %d} failed (attempt %d), will retry: %s",
                            name, version, attempt.failures, status.message)
                with self._lock:
                    entry = self._states[name][version]
                    entry.error_code, entry.error_message = status.code, status.message
            return
        with self._lock:
            self._loaded[name][version] = servable
        self._set_state(name, version, "AVAILABLE")
        log.info("Successfully loaded servable version {name: %s version: %d}", name, version)

    def _unload(self, name: str, version: int) -> None:
        self._set_state(name, version, "UNLOADING")
        with self._lock:
            self._loaded[name].pop(version, None)  # in-flight requests keep their own reference
        self._set_state(name, version, "END")
        log.info("Unloaded servable version {name: %s version: %d}", name, version)

    def wait_until_models_available(self, stop: threading.Event, interval_s: float = 0.05) -> str | None:
        """Blocks until every configured model has a version AVAILABLE (None) or one that ended without any
        becoming available (the error text), like ServerCore::WaitUntilModelsAvailable; "" if `stop` was set.

        A model without version folders keeps the wait going (the real server waits forever too).
        """
        while not stop.wait(interval_s):
            with self._lock:
                names = list(self._configs)
                states = {n: {v: VersionState(**vars(s)) for v, s in self._states.get(n, {}).items()} for n in names}
            failed, waiting = [], False
            for name in names:
                versions = states[name]
                if any(s.state == "AVAILABLE" for s in versions.values()):
                    continue
                ended = [(v, s) for v, s in versions.items() if s.state == "END"]
                if ended:
                    version, state = max(ended)
                    failed.append(f"{{name: {name} version: {version}}} due to error: {state.error_code}: "
                                  f"{state.error_message}")
                else:
                    waiting = True
            if not waiting:
                if not failed:
                    return None
                return f"{len(failed)} model(s) did not become available: {{" + "".join(
                    "{" + f + "}, " for f in failed) + "}"
        return ""

    # -- lookups -----------------------------------------------------------------------------------------------

    def get_servable(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable for Latest(name) / Specific(name, version) / a label, or 404 like BasicManager.

        The label is resolved under the same lock as the lookup, so a request never pairs the old label
        with a version the poller has just unloaded."""
        with self._lock:
            if label is not None:
                version = version_for_label(self._labels, name, label)
            loaded = self._loaded.get(name, {})
            if version is None:
                if loaded:
                    return loaded[max(loaded)]
                raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({name})")
            if version in loaded:
                return loaded[version]
        raise ServingError("NOT_FOUND", f"Servable not found for request: Specific({name}, {version})")

    def model_status(self, name: str, version: int | None = None) -> dict:
        """GetModelStatusResponse as proto-JSON (versions as strings, newest first).

        There is no label argument: GetModelStatusImpl looks only at a ModelSpec's version, so the real server
        answers `GET /v1/models/NAME/labels/ANY` with the status of every version, even for unknown labels."""
        with self._lock:
            states = {v: VersionState(**vars(s)) for v, s in self._states.get(name, {}).items()}
        if version is not None:
            if version not in states:
                raise ServingError("NOT_FOUND", f"Could not find version {version} of model {name}")
            states = {version: states[version]}
        elif not states:
            raise ServingError("NOT_FOUND", f"Could not find any versions of model {name}")
        return {
            "model_version_status": [
                {
                    "version": str(v),
                    "state": s.state,
                    "status": {"error_code": s.error_code, "error_message": s.error_message},
                }
                for v, s in sorted(states.items(), reverse=True)
            ]
        }

    def model_metadata(self, name: str, version: int | None = None, label: str | None = None) -> dict:
        """GetModelMetadataResponse JSON with the doubled signature_def nesting."""
        servable = self.get_servable(name, version, label)
        return {
            "model_spec": {"name": name, "signature_name": "", "version": str(servable.version)},
            "metadata": {"signature_def": servable.metadata_signature_defs()},
        }

