"""Helpers for the serving tests: a tiny keyword SavedModel with bertbc's signature, and a dev server subprocess.

The keyword model has the exported classifier's exact signature,
`serving_default(text: string[None]) -> {probabilities: float32[None,5], class_id: int64[None], label: string[None]}`,
and runs TF-Text ops (so the server must import tensorflow_text), but its answers are predictable: each class has
keywords, scores are keyword counts / temperature, e.g. "football" -> sport. `temperature` makes versions
distinguishable (v1: 1.0, v2: 0.25 → much more confident).

Set BERTBC_SERVING_URL (e.g. http://127.0.0.1:8501) to point the API suite at an already running server (e.g.
real tensorflow_model_server serving `python tests/serving_fixtures.py DIR`'s export as model `bertbc`); the
filesystem-driven tests are skipped then.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

import requests

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # so `serving` / `trainer` import under plain `pytest` too
    sys.path.insert(0, REPO_ROOT)
CLASS_NAMES = ("business", "entertainment", "politics", "sport", "tech")
KEYWORDS = {
    "business": ("market", "shares", "economy", "profit"),
    "entertainment": ("film", "music", "actor", "album"),
    "politics": ("election", "minister", "parliament", "vote"),
    "sport": ("football", "match", "cup", "coach"),
    "tech": ("software", "computer", "internet", "phone"),
}
SERVING_URL = os.environ.get("BERTBC_SERVING_URL", "").rstrip("/")
MODEL = os.environ.get("BERTBC_SERVING_MODEL", "bertbc")


def expected_label(text: str) -> str:
    """The keyword model's label: most keyword hits, ties -> first class in CLASS_NAMES order."""
    words = text.lower().split()
    counts = [sum(words.count(k) for k in KEYWORDS[c]) for c in CLASS_NAMES]
    return CLASS_NAMES[counts.index(max(counts))]


def build_keyword_model(export_dir: str, *, temperature: float = 1.0) -> str:
    """Saves the keyword classifier as a SavedModel at `export_dir` (must not exist); returns export_dir."""
    import tensorflow as tf
    import tensorflow_text as tf_text

    class KeywordClassifier(tf.Module):
        def __init__(self):
            super().__init__()
            self.temperature = tf.Variable(temperature, dtype=tf.float32, trainable=False)
            self.class_names = tf.constant(CLASS_NAMES)
            self.patterns = [("|".join(KEYWORDS[c])) for c in CLASS_NAMES]
            self.tokenizer = tf_text.WhitespaceTokenizer()

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            clean = tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace")
            tokens = self.tokenizer.tokenize(tf.strings.lower(clean))  # ragged [B, words]
            counts = [
                tf.reduce_sum(tf.cast(tf.strings.regex_full_match(tokens, p), tf.float32), axis=1)
                for p in self.patterns
            ]
            scores = tf.stack(counts, axis=1) / self.temperature  # [B, 5]
            probabilities = tf.nn.softmax(scores, axis=1)
            class_id = tf.argmax(scores, axis=1, output_type=tf.int64)
            return {
                "probabilities": probabilities,
                "class_id": class_id,
                "label": tf.gather(self.class_names, class_id),
            }

    module = KeywordClassifier()
    tf.saved_model.save(module, export_dir, signatures={"serving_default": module.serve})
    return export_dir


def build_model_versions(root: str) -> dict[str, str]:
    """Builds the reusable model folders once: {"v1": path, "v2": path} (copy them into base paths)."""
    return {
        "v1": build_keyword_model(os.path.join(root, "keyword_v1"), temperature=1.0),
        "v2": build_keyword_model(os.path.join(root, "keyword_v2"), temperature=0.25),
    }


def publish(src: str, base: str, version: int) -> str:
    """Copies `src` to a hidden temp folder under `base`, then renames it to `<base>/<version>` atomically."""
    os.makedirs(base, exist_ok=True)
    tmp = os.path.join(base, f".tmp-{version}-{os.getpid()}")
    shutil.copytree(src, tmp)
    final = os.path.join(base, str(version))
    os.rename(tmp, final)
    return final


def write_broken_version(base: str, version: int) -> str:
    """A numeric folder whose saved_model.pb is garbage (fails to load)."""
    path = os.path.join(base, str(version))
    os.makedirs(os.path.join(path, "variables"))
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
        f.write(b"\x00not a protobuf\xff" * 10)
    return path


def write_half_version(src: str, base: str, version: int) -> str:
    """A numeric folder with only variables/ (saved_model.pb not written yet), like an export in progress."""
    path = os.path.join(base, str(version))
    shutil.copytree(os.path.join(src, "variables"), os.path.join(path, "variables"))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, message: str = "condition"):
    """Polls `predicate()` until it returns a truthy value; returns it or raises AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (requests.RequestException, KeyError, ValueError, AssertionError) as err:
            last_error = err
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last error: {last_error})")


def version_states(url: str, model: str) -> dict[int, tuple[str, str]]:
    """{version: (state, error_code)} from the status endpoint ({} when 404)."""
    r = requests.get(f"{url}/v1/models/{model}", timeout=5)
    if r.status_code == 404:
        return {}
    return {int(v["version"]): (v["state"], v["status"]["error_code"]) for v in r.json()["model_version_status"]}


class DevServer:
    """A `python -m serving` subprocess on a free loopback port."""

    def __init__(self, args: list[str], log_path: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO_ROOT, CUDA_VISIBLE_DEVICES="")
        self._log = open(log_path, "wb")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving", f"--rest_api_port={self.port}", "--rest_api_host=127.0.0.1", *args],
            cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def log_text(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_available(self, model: str, timeout: float = 90.0) -> None:
        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            return any(s == "AVAILABLE" for s, _ in version_states(self.url, model).values())

        wait_for(ready, timeout=timeout, interval=0.1, message=f"model {model} AVAILABLE")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@contextmanager
def dev_server(args: list[str], log_dir: str, wait_models: tuple[str, ...] = ()):
    """Starts a dev server, waits until `wait_models` are AVAILABLE, yields it, stops it."""
    server = DevServer(args, os.path.join(log_dir, f"server-{time.monotonic_ns()}.log"))
    try:
        for model in wait_models:
            server.wait_available(model)
        yield server
    finally:
        server.stop()


if __name__ == "__main__":
    # Export the fixture model for a real tensorflow_model_server: python tests/serving_fixtures.py DIR
    target = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="bertbc-fixture-")
    build_keyword_model(os.path.join(target, "1"))
    print(f"model written to {target}/1; serve it with --model_name=bertbc --model_base_path={target}")
