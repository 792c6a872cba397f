"""Version discovery and hot swap: one dev server with a --model_config_file listing one model per scenario.

Needs the server's base paths on this filesystem, so it is skipped when BERTBC_SERVING_URL targets another server.
"""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest
import requests
from serving_fixtures import (
    SERVING_URL,
    build_model_versions,
    dev_server,
    publish,
    version_states,
    wait_for,
    write_broken_version,
    write_half_version,
)

from serving.manager import ModelConfig, aspired_versions, load_model_config_file, scan_versions

pytestmark = pytest.mark.skipif(bool(SERVING_URL), reason="needs a dev server on this filesystem")

SPORT = "the football match and the cup"
MODELS = ("swap", "broken", "half", "empty", "warm", "labels")


def sport_probability(url: str, model: str, version_path: str = "", session=requests) -> float:
    r = session.post(f"{url}/v1/models/{model}{version_path}:predict", json={"instances": [SPORT]}, timeout=30)
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"][0]
    assert pred["label"] == "sport"
    return pred["probabilities"][3]


def is_v2(p_sport: float) -> bool:
    return p_sport > 0.9  # 3 sport keywords: v1 (temperature 1) gives 0.83, v2 (temperature 0.25) > 0.99


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving_versions")
    src = build_model_versions(str(root / "src"))
    bases = {m: str(root / "models" / m) for m in MODELS}
    for model in MODELS:
        publish(src["v1"], bases[model], 1)
    # Not versions: must be ignored by discovery (they hold the confident v2 model).
    shutil.copytree(src["v2"], os.path.join(bases["swap"], "9.tmp"))
    shutil.copytree(src["v2"], os.path.join(bases["swap"], ".tmp-9-123"))
    publish(src["v2"], bases["labels"], 2)
    from trainer.warmup import write_warmup_requests

    write_warmup_requests(os.path.join(bases["warm"], "1"), ["football match", "shares market"], model_name="warm")
    config = root / "models.config"
    entries = []
    for model in MODELS:
        extra = ""
        if model == "labels":
            extra = ("model_version_policy { specific { versions: 1 versions: 2 } }\n"
                     "    version_labels { key: 'stable' value: 1 }\n    version_labels { key: 'canary' value: 2 }")
        entries.append(f"  config {{\n    name: '{model}'\n    base_path: '{bases[model]}'\n"
                       f"    model_platform: 'tensorflow'\n    {extra}\n  }}")
    config.write_text("model_config_list {\n" + "\n".join(entries) + "\n}\n")
    args = [f"--model_config_file={config}", "--file_system_poll_wait_seconds=0.2", "--max_num_load_retries=1",
            "--load_retry_interval_micros=100000", "--allow_version_labels_for_unavailable_models"]
    with dev_server(args, str(root), wait_models=MODELS) as server:
        yield {"url": server.url, "bases": bases, "src": src, "server": server}


def test_model_config_file_parsing(tmp_path):
    path = tmp_path / "m.config"
    path.write_text(
        "model_config_list { config { name: 'a' base_path: '/m/a' model_platform: 'tensorflow' "
        "model_version_policy { latest { num_versions: 2 } } } "
        "config { name: 'b' base_path: 'rel' model_version_policy { all {} } version_labels { key: 's' value: 3 } } }"
    )
    a, b = load_model_config_file(str(path))
    assert (a.name, a.base_path, a.policy, a.num_versions) == ("a", "/m/a", "latest", 2)
    assert (b.policy, b.labels, b.base_path) == ("all", {"s": 3}, str(tmp_path / "rel"))
    path.write_text("model_config_list { config { name: 'a' bogus: 1 } }")
    with pytest.raises(ValueError, match="bogus"):
        load_model_config_file(str(path))


def test_scan_and_policies(tmp_path):
    for name in ["1", "0003", "7", "1.tmp", ".tmp-9-123", "abc", "-", "12a"]:
        (tmp_path / name).mkdir()
    found = scan_versions(str(tmp_path))
    assert sorted(found) == [1, 3, 7]
    assert found[3].endswith("0003")
    assert scan_versions(str(tmp_path / "missing")) == {}
    cases = [
        (ModelConfig("m", "b"), [7]),
        (ModelConfig("m", "b", num_versions=2), [7, 3]),
        (ModelConfig("m", "b", policy="all"), [7, 3, 1]),
        (ModelConfig("m", "b", policy="specific", versions=(1, 5)), [1]),
    ]
    for config, expected in cases:
        assert sorted(aspired_versions(found, config), reverse=True) == expected, config


def test_non_numeric_folders_are_ignored(env):
    states = version_states(env["url"], "swap")
    assert 9 not in states
    assert sport_probability(env["url"], "swap") < 0.9


def test_hot_swap_has_zero_failed_requests(env):
    url, failures, seen_v2, stop = env["url"], [], threading.Event(), threading.Event()
    counts = [0] * 4

    def client(i):
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    p = sport_probability(url, "swap", session=session)
                    counts[i] += 1
                    if is_v2(p):
                        seen_v2.set()
                except Exception as err:  # noqa: BLE001  (every failure counts)
                    failures.append(repr(err))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        publish(env["src"]["v2"], env["bases"]["swap"], 2)
        assert seen_v2.wait(30), "version 2 never answered"
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert sum(counts) > 20
    wait_for(lambda: version_states(url, "swap") == {2: ("AVAILABLE", "OK"), 1: ("END", "OK")}, timeout=10,
             message="v1 unloaded after swap")
    assert is_v2(sport_probability(url, "swap"))


def test_broken_version_keeps_previous_serving(env):
    url = env["url"]
    write_broken_version(env["bases"]["broken"], 2)
    wait_for(lambda: version_states(url, "broken").get(2, ("",))[0] == "END", timeout=20, message="v2 END")
    status = requests.get(f"{url}/v1/models/broken/versions/2", timeout=5).json()["model_version_status"][0]
    assert status["state"] == "END"
    assert status["status"]["error_code"] != "OK" and status["status"]["error_message"]
    assert version_states(url, "broken")[1] == ("AVAILABLE", "OK")
    assert sport_probability(url, "broken") < 0.9  # still v1
    r = requests.post(f"{url}/v1/models/broken/versions/2:predict", json={"instances": ["a"]}, timeout=10)
    assert r.status_code == 404 and r.json() == {"error": "Servable not found for request: Specific(broken, 2)"}


def test_half_written_version_is_never_served(env):
    url, base = env["url"], env["bases"]["half"]
    write_half_version(env["src"]["v2"], base, 2)
    deadline = time.monotonic() + 2.0  # several polls and both load attempts
    while time.monotonic() < deadline:
        assert sport_probability(url, "half") < 0.9
    wait_for(lambda: version_states(url, "half").get(2, ("",))[0] == "END", timeout=10, message="v2 END")
    states = version_states(url, "half")
    assert states[1] == ("AVAILABLE", "OK") and states[2] == ("END", "NOT_FOUND")
    assert sport_probability(url, "half") < 0.9


def test_empty_base_path_unloads_model(env):
    url, base = env["url"], env["bases"]["empty"]
    assert sport_probability(url, "empty") > 0
    os.rename(os.path.join(base, "1"), os.path.join(base, "removed"))

    def gone():
        r = requests.post(f"{url}/v1/models/empty:predict", json={"instances": ["a"]}, timeout=5)
        return r.status_code == 404 and r.json() == {"error": "Servable not found for request: Latest(empty)"}

    wait_for(gone, timeout=10, message="model unloaded")
    assert version_states(url, "empty") == {1: ("END", "OK")}


def test_warmup_runs_and_bad_warmup_fails_the_load(env):
    from trainer.warmup import write_warmup_requests

    url, base, server = env["url"], env["bases"]["warm"], env["server"]
    assert "Number of warmup records read: 3." in server.log_text()
    staging = os.path.join(os.path.dirname(base), "warm-staging")
    shutil.copytree(env["src"]["v2"], staging)
    write_warmup_requests(staging, ["football"], model_name="warm", input_name="wrong")
    os.rename(staging, os.path.join(base, "2"))
    wait_for(lambda: version_states(url, "warm").get(2, ("",))[0] == "END", timeout=20, message="v2 END")
    status = requests.get(f"{url}/v1/models/warm/versions/2", timeout=5).json()["model_version_status"][0]
    assert status["status"]["error_code"] == "INVALID_ARGUMENT"
    assert "Missing but required: {text}" in status["status"]["error_message"]
    assert version_states(url, "warm")[1] == ("AVAILABLE", "OK")


def test_labels_and_specific_policy(env):
    url = env["url"]
    assert version_states(url, "labels") == {2: ("AVAILABLE", "OK"), 1: ("AVAILABLE", "OK")}
    status = requests.get(f"{url}/v1/models/labels", timeout=5).json()["model_version_status"]
    assert [s["version"] for s in status] == ["2", "1"]
    assert not is_v2(sport_probability(url, "labels", "/labels/stable"))
    assert is_v2(sport_probability(url, "labels", "/labels/canary"))
    assert not is_v2(sport_probability(url, "labels", "/versions/1"))
    assert is_v2(sport_probability(url, "labels"))  # Latest = highest loaded
    meta = requests.get(f"{url}/v1/models/labels/labels/stable/metadata", timeout=5).json()
    assert meta["model_spec"]["version"] == "1"
