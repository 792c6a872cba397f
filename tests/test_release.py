"""Canary, promote, rollback (trainer/release.py): atomic, correct rewrites of a TF Serving model config."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from trainer import release
from trainer.release import ReleaseError, ReleaseState, plan_promote, plan_publish, plan_rollback


def parse(path: Path):
    return text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())


def entry(path: Path, name: str = "bertbc"):
    (found,) = [c for c in parse(path).model_config_list.config if c.name == name]
    return sorted(found.model_version_policy.specific.versions), dict(found.version_labels)


def fake_versions(base: Path, *versions: int, gate: str = "on", passed: bool = True) -> None:
    """Version folders with a saved_model.pb and a model card saying what the gate decided."""
    for v in versions:
        folder = base / str(v)
        folder.mkdir(parents=True)
        (folder / "saved_model.pb").write_bytes(b"")
        (folder / "model_card.json").write_text(json.dumps({"gate": {"mode": gate, "passed": passed}}))


def run(base: Path, *argv: str) -> int:
    return release.main([*argv, "--model-base-path", str(base)])


@pytest.mark.parametrize("state, plan, expected", [
    (ReleaseState(), lambda s: plan_publish(s, 1, canary=False), ReleaseState(1, None, [])),
    (ReleaseState(1), lambda s: plan_publish(s, 2, canary=True), ReleaseState(1, 2, [])),
    (ReleaseState(1, 2), plan_promote, ReleaseState(2, None, [1])),
    (ReleaseState(2, None, [1]), lambda s: plan_publish(s, 3, canary=False), ReleaseState(3, None, [1, 2])),
    (ReleaseState(3, 4, [1, 2]), "rollback", ReleaseState(2, 4, [1])),
])
def test_transitions(tmp_path, state, plan, expected):
    fake_versions(tmp_path, 1, 2, 3, 4)  # rollback only goes back to versions that still exist
    plan = (lambda s: plan_rollback(s, tmp_path)) if plan == "rollback" else plan
    assert plan(state) == expected


@pytest.mark.parametrize("state, plan, reason", [
    (ReleaseState(), lambda s: plan_publish(s, 1, canary=True), "nothing is stable yet"),
    (ReleaseState(1), lambda s: plan_publish(s, 1, canary=True), "already stable"),
    (ReleaseState(1, 2), lambda s: plan_publish(s, 2, canary=True), "already the canary"),
    (ReleaseState(1), lambda s: plan_publish(s, 1, canary=False), "already stable"),
    (ReleaseState(1), plan_promote, "nothing to promote"),
    (ReleaseState(1), lambda s: plan_rollback(s, Path("/nonexistent")), "nothing to roll back to"),
    (ReleaseState(2, None, [1]), lambda s: plan_rollback(s, Path("/nonexistent")), "nothing to roll back to"),
])
def test_refusals(state, plan, reason):
    with pytest.raises(ReleaseError, match=reason):
        plan(state)


def test_publish_canary_promote_rollback_rewrite_the_config(tmp_path, capsys):
    base = tmp_path / "models" / "bertbc"
    fake_versions(base, 1)
    config = tmp_path / "models" / "models.config"  # the default: beside the base path
    config.write_text('model_config_list { config { name: "other" base_path: "/models/other" } '
                      'config { name: "bertbc" base_path: "/models/bertbc" model_platform: "tensorflow" } }')
    assert run(base, "publish", "--version", "1") == 0
    # The server loaded version 1 under the default policy (latest), so the label moves in one write.
    assert entry(config) == ([1], {"stable": 1})
    assert entry(config, "other") == ([], {})  # other models are kept as they were
    assert [c.base_path for c in parse(config).model_config_list.config] == ["/models/other", "/models/bertbc"]
    fake_versions(base, 2)  # the next training run

    # Version 2 is not loaded: first a write that loads it (labels unchanged), then one that labels it.
    assert run(base, "publish", "--canary") == 0
    assert "run the same command again" in capsys.readouterr().out
    assert entry(config) == ([1, 2], {"stable": 1})
    inode = config.stat().st_ino
    assert run(base, "publish", "--canary") == 0
    assert entry(config) == ([1, 2], {"stable": 1, "canary": 2})
    assert config.stat().st_ino != inode  # replaced by rename, never rewritten in place

    assert run(base, "promote") == 0
    assert entry(config) == ([2], {"stable": 2})
    assert release.read_state(config, "bertbc") == ReleaseState(2, None, [1])

    assert run(base, "rollback") == 0  # version 1 was unloaded by the promote: load it first
    assert entry(config) == ([1, 2], {"stable": 2})
    assert run(base, "rollback") == 0
    assert entry(config) == ([1], {"stable": 1})
    assert release.read_state(config, "bertbc") == ReleaseState(1, None, [])
    assert sorted(p.name for p in config.parent.iterdir() if p.name.endswith(".tmp")) == []
    capsys.readouterr()

    assert run(base, "rollback") == release.EXIT_REFUSED
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing to roll back to" in err
    assert run(base, "promote") == release.EXIT_REFUSED
    assert "nothing to promote" in capsys.readouterr().err


@pytest.mark.parametrize("gate, passed, reason", [
    ("off", None, "published with --gate off"),
    ("on", False, "only versions the evaluation gate blessed"),
])
def test_only_blessed_versions_get_a_label(tmp_path, capsys, gate, passed, reason):
    base = tmp_path / "models" / "bertbc"
    fake_versions(base, 1, gate=gate, passed=passed)
    assert run(base, "publish", "--version", "1") == release.EXIT_REFUSED
    assert reason in capsys.readouterr().err
    assert run(base, "publish", "--version", "7") == release.EXIT_REFUSED
    assert "version 7 does not exist" in capsys.readouterr().err
    assert not (tmp_path / "models" / "models.config").exists()


def test_concurrent_readers_never_see_a_partial_file(tmp_path):
    """A poller reading the file while it is rewritten always parses a complete config."""
    path = tmp_path / "models.config"
    texts = [release.render(model_server_config_pb2.ModelServerConfig(), {"bertbc": {"history": list(range(n))}})
             + "# " + "x" * 50_000 + "\n" for n in (1, 2)]
    release.write_atomic(path, texts[0])
    stop, seen = threading.Event(), set()

    def poll():
        while not stop.is_set():
            seen.add(path.read_text())

    reader = threading.Thread(target=poll)
    reader.start()
    for i in range(60):
        release.write_atomic(path, texts[i % 2])
    stop.set()
    reader.join()
    assert seen <= set(texts) and len(seen) == 2


# -- end to end: a running dev server switches /labels/stable with no failed request ------------------------------


def _build_versions(base: Path) -> None:
    """Two blessed keyword models that answer "election" differently (v1 politics, v2 sport)."""
    from test_gate import KEYWORDS, SWAPPED, KeywordModule

    from trainer.export import export_saved_model
    from trainer.gate import update_card

    for keywords in (KEYWORDS, SWAPPED):
        export_saved_model(KeywordModule(keywords), base, before_publish=lambda tmp: update_card(
            tmp, gate={"mode": "on", "passed": True}))


def test_promote_and_rollback_under_a_running_dev_server(tmp_path):
    import requests
    from serving_fixtures import DevServer, wait_for

    base = tmp_path / "models" / "bertbc"
    _build_versions(base)
    config = tmp_path / "models" / "models.config"
    assert run(base, "publish", "--version", "1") == 0
    server = DevServer([f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=0.2",
                        "--allow_version_labels_for_unavailable_models", "--file_system_poll_wait_seconds=0.2"],
                       str(tmp_path / "server.log"))
    try:
        server.wait_available("bertbc")
        url = f"{server.url}/v1/models/bertbc/labels/stable:predict"
        probe = requests.post(url, json={"instances": ["election"]}, timeout=10)
        assert probe.status_code == 200, f"label routing: {probe.status_code} {probe.text[:200]}"
        spec = requests.get(f"{server.url}/v1/models/bertbc/labels/stable/metadata", timeout=10).json()["model_spec"]
        assert spec["version"] == "1", spec  # what the compose journey reads to follow the labels
        answers, failures, stop = [], [], threading.Event()

        def client():
            while not stop.is_set():
                r = requests.post(url, json={"instances": ["election"]}, timeout=30)
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                else:
                    answers.append(r.json()["predictions"][0]["label"])

        loop = threading.Thread(target=client)
        loop.start()
        try:
            flags = ["--server", server.url, "--wait-seconds", "120"]
            assert run(base, "publish", "--canary", "--version", "2", *flags) == 0
            canary = requests.post(url.replace("/stable:", "/canary:"), json={"instances": ["election"]}, timeout=10)
            assert canary.json()["predictions"][0]["label"] == "sport"
            assert set(answers) == {"politics"}  # stable kept serving version 1
            assert run(base, "promote", *flags) == 0
            n = len(answers)
            wait_for(lambda: len(answers) > n + 5, timeout=60, message="requests after the promote")
            assert answers[-1] == "sport"
            assert run(base, "rollback", *flags) == 0
            n = len(answers)
            wait_for(lambda: len(answers) > n + 5, timeout=60, message="requests after the rollback")
            assert answers[-1] == "politics"
        finally:
            stop.set()
            loop.join()
        assert failures == []
        assert "sport" in answers and answers.count("politics") > 1
        switches = sum(a != b for a, b in zip(answers, answers[1:], strict=False))
        assert switches == 2, f"stable should switch exactly twice (promote, rollback), saw {switches}"
        assert entry(config) == ([1], {"stable": 1})
    finally:
        server.stop()


def test_release_cli_is_dispatched_without_tensorflow(tmp_path):
    """`python -m trainer promote` is a light command: trainer/cli.py dispatches it before TensorFlow is imported."""
    import subprocess
    import sys

    code = ("import sys; from trainer.cli import main; rc = main(sys.argv[1:]); "
            "print('tensorflow imported' if 'tensorflow' in sys.modules else 'no tensorflow'); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, "promote", "--model-base-path", str(tmp_path / "bertbc")],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert done.returncode == release.EXIT_REFUSED, done.stderr
    assert "nothing to promote" in done.stderr
    assert done.stdout.strip() == "no tensorflow"
