"""Load check (TFX's InfraValidator, small): load a candidate version in a FRESH process the way the server will.

The trainer's own process has every Python module of the model imported, so a SavedModel that only loads there
(a missing op library, a custom object, a broken variable file written by a dying disk) would be published and
then fail in the server. Before publishing, the candidate is therefore loaded

* by `tensorflow_model_server` itself when it is on PATH: a copy of the folder as version 1 of a throwaway base
  path, REST on a free port, until the version is AVAILABLE (the server replays the warm-up requests during the
  load, and a failing one fails the load), or
* otherwise by a child Python process that imports only TensorFlow and TF-Text (the op set the server links),
  calls `tf.saved_model.load` and replays every `assets.extra/tf_serving_warmup_requests` record (TFRecord of
  PredictionLog) against its signature, checking each answer's batch size and that probabilities are finite.

Either failure raises `LoadCheckFailed` with a one-line reason, and nothing is published.
The child can be started before the export is saved (`PythonChild`): it imports TensorFlow while the trainer
writes the version, then waits for the folder's path on stdin, which hides most of its start-up cost.
Run the child by hand: `python -m trainer.loadcheck VERSION_DIR` (prints one JSON line; exit 1 on failure).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import weakref
from pathlib import Path

from trainer.gate import EXIT_LOAD_CHECK_FAILED, PublishRefused  # standard library only: the child stays lean

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # tensorflow_serving WarmupConsts::kMaxNumRecords


class LoadCheckFailed(PublishRefused):
    """The candidate did not load or answer its warm-up requests in a fresh process; message = one line."""

    exit_code = EXIT_LOAD_CHECK_FAILED


@dataclasses.dataclass(frozen=True)
class LoadCheckReport:
    how: str  # "tf.saved_model.load in a fresh python" or "tensorflow_model_server"
    requests: int  # warm-up records replayed
    seconds: float  # wall time of the whole check (process start, imports, load, replay)

    def as_dict(self) -> dict:
        return {"ok": True, "how": self.how, "warmup_requests": self.requests, "seconds": round(self.seconds, 2)}


def model_server() -> str | None:
    """The `tensorflow_model_server` binary on PATH, if any."""
    return shutil.which("tensorflow_model_server")


def check_fresh_process(version_dir: str | Path, *, timeout: float = 600.0, model_name: str = "bertbc",
                        use_model_server: bool | None = None, child: PythonChild | None = None) -> LoadCheckReport:
    """Loads `version_dir` in a new process as the server would; raises LoadCheckFailed if that fails.

    Args:
      version_dir: a complete version folder (saved_model.pb, variables/, assets.extra/).
      timeout: seconds before the check itself counts as a failure.
      model_name: the name the throwaway model server serves it under.
      use_model_server: None = `tensorflow_model_server` when on PATH; False = always the Python loader.
      child: a `PythonChild` started earlier (used for the Python loader instead of starting one now).
    """
    started = time.perf_counter()
    server = model_server() if use_model_server is not False else None
    if server:
        if child is not None:
            child.close()
        requests = _check_with_model_server(server, Path(version_dir), model_name, timeout)
        how = "tensorflow_model_server"
    else:
        requests = (child or PythonChild()).check(Path(version_dir), timeout)
        how = "tf.saved_model.load in a fresh python"
    return LoadCheckReport(how, requests, time.perf_counter() - started)


def _child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}  # a training cluster is not the server's
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["CUDA_VISIBLE_DEVICES"] = env.get("BERTBC_LOADCHECK_DEVICES", "")  # a CPU load: the GPU stays training's
    return env


class PythonChild:
    """A fresh `python -m trainer.loadcheck --stdin`: imports TensorFlow and TF-Text at once, then loads the one
    folder whose path it reads from stdin. Closing stdin (or the parent's death) ends it."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "trainer.loadcheck", "--stdin"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env(),
                                     cwd=str(Path(__file__).resolve().parents[1]))
        self._finalizer = weakref.finalize(self, _stop, self.proc)

    def check(self, version_dir: Path, timeout: float) -> int:
        """Replays `version_dir`'s warm-up requests in the child; returns how many; raises LoadCheckFailed."""
        try:
            stdout, stderr = self.proc.communicate(f"{version_dir}\n", timeout=timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise LoadCheckFailed(f"load check: {version_dir} did not load within {timeout:.0f} s") from None
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        result = json.loads(lines[-1]) if lines else {"ok": False, "error": _last_line(stderr)}
        if self.proc.returncode != 0 or not result.get("ok"):
            raise LoadCheckFailed(f"load check: a fresh process could not load {version_dir}: "
                                  f"{result.get('error') or _last_line(stderr)}")
        return int(result["requests"])

    def close(self) -> None:
        self._finalizer()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:400] if lines else "no output"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_with_model_server(server: str, version_dir: Path, model_name: str, timeout: float) -> int:
    """A throwaway `tensorflow_model_server` on a copy of the candidate, until AVAILABLE (or failed)."""
    requests = _count_warmup_records(version_dir)
    with tempfile.TemporaryDirectory(prefix="bertbc-loadcheck-") as tmp:
        base = Path(tmp) / model_name
        shutil.copytree(version_dir, base / "1")
        rest = _free_port()
        cmd = [server, f"--port={_free_port()}", f"--rest_api_port={rest}", f"--model_name={model_name}",
               f"--model_base_path={base}", "--file_system_poll_wait_seconds=0", "--max_num_load_retries=0"]
        with open(Path(tmp) / "server.log", "w+") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_child_env())
            try:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    if proc.poll() is not None:
                        out.seek(0)
                        raise LoadCheckFailed(f"load check: tensorflow_model_server exited ({proc.returncode}) "
                                              f"loading {version_dir}: {_last_line(out.read())}")
                    state = _model_state(rest, model_name)
                    if state == "AVAILABLE":
                        return requests
                    time.sleep(0.5)
                raise LoadCheckFailed(f"load check: tensorflow_model_server did not make {version_dir} AVAILABLE "
                                      f"within {timeout:.0f} s")
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _model_state(port: int, model_name: str) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models/{model_name}", timeout=2) as r:
            body = json.loads(r.read())
    except (OSError, ValueError):
        return None  # the REST port opens only once the model is loaded
    states = [v.get("state") for v in body.get("model_version_status", [])]
    return "AVAILABLE" if "AVAILABLE" in states else (states[0] if states else None)


def _count_warmup_records(version_dir: Path) -> int:
    path = version_dir / WARMUP_FILE
    if not path.is_file():
        return 0
    import tensorflow as tf  # noqa: PLC0415

    return sum(1 for _ in tf.data.TFRecordDataset(str(path)))


# -- the child process: only TensorFlow and TF-Text, as the model server links them ------------------------------


def replay(version_dir: str) -> int:
    """Loads the SavedModel and replays its warm-up records; returns how many. Raises on any failure."""
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415
    import tensorflow_text  # noqa: F401, PLC0415 (the TF-Text ops the model server links)
    from tensorflow_serving.apis import prediction_log_pb2  # noqa: PLC0415 (the record format only)

    loaded = tf.saved_model.load(version_dir)
    path = os.path.join(version_dir, WARMUP_FILE)
    if not os.path.isfile(path):
        return 0
    count = 0
    for count, raw in enumerate(tf.data.TFRecordDataset(path), start=1):
        if count > MAX_WARMUP_RECORDS:
            raise ValueError(f"more than {MAX_WARMUP_RECORDS} warm-up records (TF Serving refuses the version)")
        record = prediction_log_pb2.PredictionLog.FromString(raw.numpy())
        if record.WhichOneof("log_type") != "predict_log":
            raise ValueError(f"warm-up record {count} is a {record.WhichOneof('log_type')}; only predict is checked")
        request = record.predict_log.request
        name = request.model_spec.signature_name or "serving_default"
        if name not in loaded.signatures:
            raise ValueError(f"warm-up record {count} calls signature {name!r}, which the model does not have "
                             f"(it has {sorted(loaded.signatures)})")
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        outputs = loaded.signatures[name](**inputs)
        batch = next(iter(inputs.values())).shape[0]
        for key, value in outputs.items():
            if value.shape.rank and value.shape[0] != batch:
                raise ValueError(f"warm-up record {count}: output {key!r} has {value.shape[0]} rows for {batch} inputs")
            if value.dtype.is_floating and not np.isfinite(value.numpy()).all():
                raise ValueError(f"warm-up record {count}: output {key!r} is not finite")
    return count


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m trainer.loadcheck VERSION_DIR | --stdin", file=sys.stderr)
        return 2
    version_dir = argv[0]
    if version_dir == "--stdin":  # import now, while the parent is still writing the version
        import tensorflow  # noqa: F401, PLC0415
        import tensorflow_text  # noqa: F401, PLC0415

        version_dir = sys.stdin.readline().strip()
        if not version_dir:
            return 0  # the parent closed stdin: nothing to check
    try:
        requests = replay(version_dir)
    except Exception as e:  # noqa: BLE001 (any failure is the answer, reported on one line)
        message = " ".join(f"{type(e).__name__}: {e}".split())[:400]
        print(json.dumps({"ok": False, "error": message}))
        return 1
    print(json.dumps({"ok": True, "requests": requests}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
