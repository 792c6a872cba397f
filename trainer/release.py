"""Canary, promote and rollback: the `stable` and `canary` version labels of a TF Serving model config file.

    python -m trainer publish [--canary] [--version N]   N (default: the newest version) becomes stable, or canary
    python -m trainer promote                            stable := canary (the old stable is remembered)
    python -m trainer rollback                           stable := the previous stable

The file is a ModelServerConfig text proto (what `tensorflow_model_server --model_config_file` and the dev server
read, re-read every `--model_config_file_poll_wait_seconds`). This module owns, for its model's entry,

    model_version_policy { specific { versions: <stable> versions: <canary> } }
    version_labels { key: "stable" value: <stable> }  version_labels { key: "canary" value: <canary> }

and keeps every other entry and field. Default location: `<model_base_path>/../models.config` (e.g.
`models/models.config`), beside the versions and outside the folder TF Serving scans. The rollback history (the
previous stable versions) lives in the same file, in one comment line TF Serving ignores
(`# bertbc-release: {"bertbc": {"history": [1, 2]}}`), so one atomic rewrite (temp file + fsync + os.replace)
changes labels and history together.

TF Serving moves an existing label only to a version that is already AVAILABLE (server_core.cc,
"Request to assign label to version … which is not currently available for inference"). So when a label must
point to a version that is not loaded yet, the rewrite happens in two steps: first the version is added to
`specific { versions }` with the labels unchanged; once it is AVAILABLE (`--server URL` polls the server's status;
without it, rerun the command later) the labels move and the versions nobody labels are dropped.

Only blessed versions get a label: their model card says the evaluation gate passed (trainer/gate.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

STABLE, CANARY = "stable", "canary"
STATE_PREFIX = "# bertbc-release: "
HEADER = ("# TF Serving model config. The `stable`/`canary` labels and the version policy of the models below are\n"
          "# written by `python -m trainer publish|promote|rollback` (docs/retrain.md); edit other fields freely.\n")
EXIT_REFUSED = 2


class ReleaseError(RuntimeError):
    """A release command cannot do what was asked; the message is the one-line reason."""


@dataclasses.dataclass
class ReleaseState:
    """One model's labels and rollback history (previous stable versions, oldest first)."""

    stable: int | None = None
    canary: int | None = None
    history: list[int] = dataclasses.field(default_factory=list)

    @property
    def labels(self) -> dict[str, int]:
        return {k: v for k, v in ((STABLE, self.stable), (CANARY, self.canary)) if v is not None}


def default_config_path(model_base_path: str | Path) -> Path:
    """`<model_base_path>/../models.config`: beside the model's folder, never inside it."""
    return Path(model_base_path).resolve().parent / "models.config"


def _pb2():
    from tensorflow_serving.config import model_server_config_pb2  # noqa: PLC0415

    return model_server_config_pb2


def read_config(path: Path):
    """(ModelServerConfig, {model: {"history": [...]}}) of `path`; an empty config if it does not exist."""
    from google.protobuf import text_format  # noqa: PLC0415

    config, extra = _pb2().ModelServerConfig(), {}
    if not path.is_file():
        return config, extra
    text = path.read_text()
    for line in text.splitlines():
        if line.startswith(STATE_PREFIX):
            try:
                extra = json.loads(line[len(STATE_PREFIX):])
            except ValueError:
                raise ReleaseError(f"{path}: the `{STATE_PREFIX.strip()}` line is not JSON; fix or delete it") from None
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise ReleaseError(f"{path} is not a ModelServerConfig text proto: {e}") from None
    return config, extra


def _entry(config, model_name: str):
    for entry in config.model_config_list.config:
        if entry.name == model_name:
            return entry
    return None


def read_state(path: Path, model_name: str) -> ReleaseState:
    """The labels and rollback history of `model_name` in the config at `path` (empty if absent)."""
    config, extra = read_config(path)
    entry = _entry(config, model_name)
    labels = dict(entry.version_labels) if entry is not None else {}
    return ReleaseState(labels.get(STABLE), labels.get(CANARY), list(extra.get(model_name, {}).get("history", [])))


def render(config, extra: dict) -> str:
    from google.protobuf import text_format  # noqa: PLC0415

    state = f"{STATE_PREFIX}{json.dumps(extra, sort_keys=True)}\n" if extra else ""
    return HEADER + state + text_format.MessageToString(config)


def write_atomic(path: Path, text: str) -> None:
    """Temp file in the same folder + fsync + os.replace + fsync of the folder: a poller never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # the server (another uid) reads it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _versions_on_disk(base_path: Path) -> list[int]:
    return sorted(int(p.name) for p in base_path.iterdir() if p.name.isdigit() and (p / "saved_model.pb").is_file()) \
        if base_path.is_dir() else []


def check_blessed(base_path: Path, version: int) -> None:
    """Refuses a version that is missing or that the evaluation gate did not pass (see its model card)."""
    folder = base_path / str(version)
    if not (folder / "saved_model.pb").is_file():
        raise ReleaseError(f"version {version} does not exist under {base_path} (versions: "
                           f"{_versions_on_disk(base_path) or 'none'})")
    card = folder / "model_card.json"
    gate = json.loads(card.read_text()).get("gate", {}) if card.is_file() else {}
    if gate.get("mode") != "on" or gate.get("passed") is not True:
        why = "was published with --gate off" if gate.get("mode") == "off" else "has no gate report in its card"
        raise ReleaseError(f"version {version} {why}: only versions the evaluation gate blessed get a label "
                           "(retrain or re-export it with the gate on)")


# -- the three transitions ---------------------------------------------------------------------------------------


def plan_publish(state: ReleaseState, version: int, *, canary: bool) -> ReleaseState:
    if canary:
        if state.stable is None:
            raise ReleaseError(f"nothing is stable yet, so there is nothing to canary against: make version "
                               f"{version} stable with `python -m trainer publish --version {version}`")
        if version == state.stable:
            raise ReleaseError(f"version {version} is already stable")
        if version == state.canary:
            raise ReleaseError(f"version {version} is already the canary")
        return ReleaseState(state.stable, version, list(state.history))
    if version == state.stable:
        raise ReleaseError(f"version {version} is already stable")
    history = [*state.history, state.stable] if state.stable is not None else list(state.history)
    return ReleaseState(version, None if state.canary == version else state.canary, history)


def plan_promote(state: ReleaseState) -> ReleaseState:
    if state.canary is None:
        raise ReleaseError(f"nothing to promote: no canary (stable is {state.stable}); "
                           "`python -m trainer publish --canary` first")
    history = [*state.history, state.stable] if state.stable is not None else list(state.history)
    return ReleaseState(state.canary, None, history)


def plan_rollback(state: ReleaseState, base_path: Path) -> ReleaseState:
    history = [v for v in state.history if (base_path / str(v) / "saved_model.pb").is_file()]
    if not history:
        raise ReleaseError(f"nothing to roll back to: no earlier stable version is recorded "
                           f"(stable is {state.stable})")
    target = history.pop()
    return ReleaseState(target, None if state.canary == target else state.canary, history)


# -- applying a state to the file (one or two atomic rewrites) ---------------------------------------------------


def _loaded_versions(entry, base_path: Path) -> set[int]:
    """The versions the entry's current policy makes the server load (latest{n}: the n newest on disk)."""
    if entry is None:
        return set()  # a model new to the config is not served yet
    policy = entry.model_version_policy.WhichOneof("policy_choice")
    on_disk = _versions_on_disk(base_path)
    if policy == "specific":
        return set(entry.model_version_policy.specific.versions)
    if policy == "all":
        return set(on_disk)
    newest = (entry.model_version_policy.latest.num_versions or 1) if policy == "latest" else 1  # unset = latest 1
    return set(on_disk[-newest:])


def _set_entry(entry, versions, labels: dict[str, int]) -> None:
    entry.model_version_policy.Clear()
    entry.model_version_policy.specific.versions.extend(sorted(versions))
    entry.version_labels.clear()
    for key, value in labels.items():
        entry.version_labels[key] = value


@dataclasses.dataclass(frozen=True)
class Target:
    """Where the config lives and what it serves."""

    config_path: Path
    model_name: str
    base_path: Path  # the versions as this process sees them (checks blessing, lists versions)
    serving_base_path: str  # base_path written into a NEW entry: the path as the server sees it
    server: str | None = None  # e.g. http://127.0.0.1:8501: wait for loads and label switches there
    wait_seconds: float = 300.0


def apply(target: Target, plan) -> tuple[ReleaseState, bool]:
    """Computes the new state with `plan(old_state)` and writes it (under a lock). Returns (state, done):
    done is False when only the loading step was written and no `server` was given to wait on."""
    lock_path = target.config_path.with_name(f".{target.config_path.name}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        config, extra = read_config(target.config_path)
        entry = _entry(config, target.model_name)
        labels = dict(entry.version_labels) if entry is not None else {}
        old = ReleaseState(labels.get(STABLE), labels.get(CANARY),
                           list(extra.get(target.model_name, {}).get("history", [])))
        new = plan(old)
        loaded_entry = entry
        if entry is None:
            entry = config.model_config_list.config.add(name=target.model_name, base_path=target.serving_base_path,
                                                        model_platform="tensorflow")
        # A file that does not exist yet has no server reading it: the first write may label anything.
        loaded = _loaded_versions(loaded_entry, target.base_path) if target.config_path.is_file() else set(new.labels.values())
        missing = set(new.labels.values()) - loaded
        previous_text = target.config_path.read_text() if target.config_path.is_file() else None
        if target.server is not None and loaded_entry is not None:
            _wait_settled(target, loaded)  # a version an earlier rewrite dropped may still be AVAILABLE there
        if missing:  # step 1: load them, labels unchanged (TF Serving moves a label only to an AVAILABLE version)
            _set_entry(entry, loaded | missing, {k: v for k, v in labels.items() if v in loaded})
            write_atomic(target.config_path, render(config, extra))
            if target.server is None:
                return new, False
            try:
                for version in sorted(missing):
                    _wait_available(target, version)
            except ReleaseError:
                if previous_text is not None:
                    write_atomic(target.config_path, previous_text)  # stop the server retrying a bad version
                raise
        _set_entry(entry, set(new.labels.values()), new.labels)
        extra[target.model_name] = {"history": new.history}
        write_atomic(target.config_path, render(config, extra))
    if target.server is not None:
        for label, version in new.labels.items():
            _wait_label(target, label, version)
        _wait_settled(target, set(new.labels.values()))
    return new, True


def _get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read())
        except ValueError:
            return e.code, {}
    except (OSError, ValueError):
        return 0, {}


def _wait_available(target: Target, version: int) -> None:
    url = f"{target.server.rstrip('/')}/v1/models/{target.model_name}/versions/{version}"
    deadline = time.monotonic() + target.wait_seconds
    while time.monotonic() < deadline:
        status, body = _get_json(url)
        for entry in body.get("model_version_status", []) if status == 200 else []:
            if entry.get("state") == "AVAILABLE":
                return
            status_of = entry.get("status", {})
            if entry.get("state") == "END" and status_of.get("error_code", "OK") != "OK":  # END + OK: unloaded
                raise ReleaseError(f"version {version} failed to load on {target.server}: "
                                   f"{status_of.get('error_code')} {status_of.get('error_message', '')}")
        time.sleep(0.2)
    raise ReleaseError(f"version {version} did not become AVAILABLE on {target.server} within "
                       f"{target.wait_seconds:.0f} s (is --model_config_file_poll_wait_seconds set?)")


def _wait_settled(target: Target, keep: set[int]) -> None:
    """Waits until no version outside `keep` is loaded on the server any more.

    Without this, a version that the last rewrite dropped still reads AVAILABLE for a moment; a label moved to
    it then would be refused by the server once it has unloaded it, and the refused reload would never load it
    again.
    """
    url = f"{target.server.rstrip('/')}/v1/models/{target.model_name}"
    deadline = time.monotonic() + target.wait_seconds
    while time.monotonic() < deadline:
        status, body = _get_json(url)
        busy = [int(e["version"]) for e in body.get("model_version_status", [])
                if int(e.get("version", 0)) not in keep and e.get("state") not in ("END", "UNKNOWN")]
        if status in (200, 404) and not busy:
            return
        time.sleep(0.2)
    raise ReleaseError(f"{target.server} still has version(s) outside {sorted(keep)} loaded after "
                       f"{target.wait_seconds:.0f} s")


def _wait_label(target: Target, label: str, version: int) -> None:
    # The metadata route resolves the label (the status route ignores labels, like the real server's).
    url = f"{target.server.rstrip('/')}/v1/models/{target.model_name}/labels/{label}/metadata"
    deadline = time.monotonic() + target.wait_seconds
    while time.monotonic() < deadline:
        status, body = _get_json(url)
        if status == 200 and str(body.get("model_spec", {}).get("version")) == str(version):
            return
        time.sleep(0.2)
    raise ReleaseError(f"{target.server} did not switch label {label!r} to version {version} within "
                       f"{target.wait_seconds:.0f} s")


# -- command line ------------------------------------------------------------------------------------------------


def parser(command: str) -> argparse.ArgumentParser:
    from trainer.cli import Parser  # noqa: PLC0415

    about = {"publish": "give a blessed version the `stable` label, or with --canary the `canary` label",
             "promote": "move `stable` to the canary's version (the old stable is remembered for rollback)",
             "rollback": "move `stable` back to the previous stable version"}
    p = Parser(prog=f"python -m trainer {command}", description=about[command] + " (docs/retrain.md).")
    if command == "publish":
        p.add_argument("--canary", action="store_true", help="label the version `canary` (stable keeps serving)")
        p.add_argument("--version", type=int, default=None, help="the version (default: the newest under "
                                                                   "--model-base-path)")
    p.add_argument("--model-base-path", default="models/bertbc", help="the versions (default %(default)s)")
    p.add_argument("--model-name", default="bertbc", help="the model's name in the config (default %(default)s)")
    p.add_argument("--model-config", default=None,
                   help="the TF Serving model config file to rewrite (default <model-base-path>/../models.config)")
    p.add_argument("--serving-base-path", default=None,
                   help="base_path written for a model new to the config: the folder as the SERVER sees it "
                        "(default the absolute --model-base-path; in compose /models/bertbc)")
    p.add_argument("--server", default=None,
                   help="REST URL of the server reading the config (e.g. http://127.0.0.1:8501): wait until a new "
                        "version is AVAILABLE before moving a label to it, then until the label switched. "
                        "Without it a label that needs a load is written in two runs of the same command")
    p.add_argument("--wait-seconds", type=float, default=300.0, help="how long to wait on --server "
                                                                     "(default %(default)s)")
    return p


def main(argv: list[str]) -> int:
    command, args = argv[0], parser(argv[0]).parse_args(argv[1:])
    base = Path(args.model_base_path)
    target = Target(Path(args.model_config) if args.model_config else default_config_path(base), args.model_name,
                    base, args.serving_base_path or str(base.resolve()), args.server, args.wait_seconds)
    try:
        if command == "publish":
            version = args.version if args.version is not None else (_versions_on_disk(base) or [None])[-1]
            if version is None:
                raise ReleaseError(f"no version under {base} to publish; train first")
            check_blessed(base, version)
            state, done = apply(target, lambda s: plan_publish(s, version, canary=args.canary))
        elif command == "promote":
            state, done = apply(target, plan_promote)
        else:
            state, done = apply(target, lambda s: plan_rollback(s, base))
    except ReleaseError as e:
        print(f"python -m trainer {command}: refused: {e}", file=sys.stderr)
        return EXIT_REFUSED
    labels = ", ".join(f"{k}={v}" for k, v in state.labels.items())
    if not done:
        print(f"{target.config_path}: loading version(s) {sorted(state.labels.values())} first (labels unchanged); "
              f"run the same command again once they are AVAILABLE, or pass --server URL to wait")
        return 0
    print(f"{target.config_path}: {labels} (earlier stable versions: {state.history or 'none'})")
    return 0
