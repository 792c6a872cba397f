"""Version labels on a running dev server: `/labels/L` routes, and a config file rewritten under load.

One dev server with `--model_config_file` polled every 0.2 s serves keyword models v1 (unsure) and v2
(confident). The config is rewritten atomically (tmp + os.replace) through tensorflow_serving's own
ModelServerConfig proto, as trainer/release.py does. The tests run in file order, as one promote/rollback story.
"""

from __future__ import annotations

import os
import re
import shutil
import threading

import pytest
import requests
from serving_fixtures import (
    MODEL,
    SERVING_URL,
    DevServer,
    build_model_versions,
    dev_server,
    publish,
    version_states,
    wait_for,
)

from serving.json_tensor import ServingError
from serving.labels import build_label_map

pytestmark = pytest.mark.skipif(bool(SERVING_URL), reason="rewrites the config of its own dev server")
SPORT = "the football match and the cup"
UNAVAILABLE = "Request to assign label to version {v} of model " + MODEL + ", which is not currently available for " \
              "inference"


def write_config(path: str, base: str, versions: list[int], labels: dict[str, int]) -> None:
    """Writes a ModelServerConfig text proto atomically (what a release tool does to move a label)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(name=MODEL, base_path=base, model_platform="tensorflow")
    model.model_version_policy.specific.versions.extend(versions)
    for label, version in labels.items():
        model.version_labels[label] = version
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text_format.MessageToString(config))
    os.replace(tmp, path)


def p_sport(url: str, route: str, session=requests) -> float:
    r = session.post(f"{url}/v1/models/{MODEL}{route}:predict", json={"instances": [SPORT]}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0]["probabilities"][3]


def is_v2(p: float) -> bool:
    return p > 0.9  # 3 sport keywords: v1 (temperature 1) gives 0.83, v2 (temperature 0.25) > 0.99


def label_version(url: str, label: str) -> str:
    r = requests.get(f"{url}/v1/models/{MODEL}/labels/{label}/metadata", timeout=10)
    return r.json()["model_spec"]["version"] if r.status_code == 200 else r.json()["error"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving_labels")
    src = build_model_versions(str(root / "src"))
    base = str(root / "models" / MODEL)
    publish(src["v1"], base, 1)
    publish(src["v2"], base, 2)
    config = str(root / "models.config")
    write_config(config, base, [1, 2], {"stable": 1, "canary": 2})
    args = [f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=0.2",
            "--file_system_poll_wait_seconds=0.2", "--allow_version_labels_for_unavailable_models"]
    with dev_server(args, str(root), wait_models=(MODEL,)) as server:
        wait_for(lambda: version_states(server.url, MODEL) == {1: ("AVAILABLE", "OK"), 2: ("AVAILABLE", "OK")},
                 message="v1 and v2 AVAILABLE")
        yield {"url": server.url, "base": base, "config": config, "src": src, "server": server, "root": root}


def test_label_routes_and_unknown_label(env):
    url = env["url"]
    assert not is_v2(p_sport(url, "/labels/stable")) and is_v2(p_sport(url, "/labels/canary"))
    assert (label_version(url, "stable"), label_version(url, "canary")) == ("1", "2")
    unknown = {"error": "Unrecognized servable version label: nosuch"}
    for method, path, body in [("POST", "/labels/nosuch:predict", {"instances": [SPORT]}),
                               ("POST", "/labels/nosuch:classify", {"examples": [{"text": SPORT}]}),
                               ("GET", "/labels/nosuch/metadata", None)]:
        r = requests.request(method, f"{url}/v1/models/{MODEL}{path}", json=body, timeout=10)
        assert (r.status_code, r.json()) == (400, unknown), path
    # JSON is parsed before the label is resolved (ProcessPredictRequest order).
    r = requests.post(f"{url}/v1/models/{MODEL}/labels/nosuch:predict", data=b"{", timeout=10)
    assert r.status_code == 400 and r.json()["error"].startswith("JSON Parse error")
    # GetModelStatus reads only a version from the ModelSpec: any label gets every version's status.
    for label in ("stable", "nosuch"):
        r = requests.get(f"{url}/v1/models/{MODEL}/labels/{label}", timeout=10)
        assert r.status_code == 200 and [s["version"] for s in r.json()["model_version_status"]] == ["2", "1"]


def test_promote_then_retire_v1_with_zero_failed_requests(env):
    url, answers, stop = env["url"], [], threading.Event()

    def client_loop():
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    answers.append(is_v2(p_sport(url, "/labels/stable", session)))
                except (AssertionError, requests.RequestException) as err:
                    answers.append(err)

    loop = threading.Thread(target=client_loop, daemon=True)
    loop.start()
    try:
        wait_for(lambda: len(answers) >= 5, message="answers before the switch")
        write_config(env["config"], env["base"], [1, 2], {"stable": 2, "canary": 2})  # promote
        wait_for(lambda: answers[-1] is True, message="stable answering with v2")
        write_config(env["config"], env["base"], [2], {"stable": 2})  # retire v1
        wait_for(lambda: version_states(url, MODEL).get(1, ("",))[0] == "END", message="v1 unloaded")
        seen = len(answers)
        wait_for(lambda: len(answers) >= seen + 5, message="answers after the unload")
    finally:
        stop.set()
        loop.join(timeout=30)
    failures = [a for a in answers if not isinstance(a, bool)]
    assert not failures, failures[:3]
    switch = answers.index(True)
    assert switch > 0 and all(answers[switch:]), "stable went back to v1 after the switch"
    assert label_version(url, "canary") == "Unrecognized servable version label: canary"  # left out: gone


def test_label_may_only_move_to_an_available_version(env):
    url, log_mark = env["url"], len(env["server"].log_text())
    write_config(env["config"], env["base"], [2], {"stable": 2})
    wait_for(lambda: label_version(url, "stable") == "2", message="stable on v2")
    publish(env["src"]["v1"], env["base"], 3)  # v3 answers like v1
    # One step (load v3 AND move stable to it): refused as a whole, so v3 is not even loaded.
    write_config(env["config"], env["base"], [2, 3], {"stable": 3})
    refused = "PollFilesystemAndReloadConfig failed to ReloadConfig: " + UNAVAILABLE.format(v=3)
    wait_for(lambda: env["server"].log_text()[log_mark:].count(refused) >= 3, message="reload refused 3 times")
    assert 3 not in version_states(url, MODEL)
    assert label_version(url, "stable") == "2" and is_v2(p_sport(url, "/labels/stable"))
    # Two steps: load v3 first, then move the label (and retire v2).
    write_config(env["config"], env["base"], [2, 3], {"stable": 2})
    wait_for(lambda: version_states(url, MODEL).get(3) == ("AVAILABLE", "OK"), message="v3 AVAILABLE")
    write_config(env["config"], env["base"], [3], {"stable": 3})
    wait_for(lambda: label_version(url, "stable") == "3", message="stable on v3")
    assert not is_v2(p_sport(url, "/labels/stable"))
    wait_for(lambda: version_states(url, MODEL).get(2, ("",))[0] == "END", message="v2 unloaded")
    r = requests.post(f"{url}/v1/models/{MODEL}/versions/2:predict", json={"instances": [SPORT]}, timeout=10)
    assert (r.status_code, r.json()) == (404, {"error": f"Servable not found for request: Specific({MODEL}, 2)"})


def test_labels_at_start_up_need_the_flag(env, tmp_path):
    config = str(tmp_path / "models.config")
    write_config(config, env["base"], [3], {"stable": 3})
    server = DevServer([f"--model_config_file={config}"], str(tmp_path / "server.log"))
    try:
        assert server.proc.wait(timeout=60) == 255
    finally:
        server.stop()
    assert f"Failed to start server. Error: FAILED_PRECONDITION: {UNAVAILABLE.format(v=3)}" in server.log_text()


@pytest.mark.parametrize(
    ("labels", "available", "current", "allow", "expected"),
    [
        ({"stable": 1}, {1}, {}, False, {"stable": 1}),
        ({"stable": 2}, {1}, {}, False, 2),
        ({"stable": 2}, {1}, {}, True, {"stable": 2}),  # a new label may name a version still loading
        ({"stable": 2}, {1}, {"stable": 2}, False, 2),  # without the flag, even an unchanged one may not
        ({"stable": 2}, {1}, {"stable": 2}, True, {"stable": 2}),
        ({"stable": 2}, {1}, {"stable": 1}, True, 2),  # moving an existing label needs an AVAILABLE version
        ({"stable": 2, "canary": 2}, {1, 2}, {"stable": 1}, False, {"stable": 2, "canary": 2}),
        ({}, set(), {"stable": 1}, False, {}),  # labels left out of the new config are gone
    ],
)
def test_build_label_map(labels, available, current, allow, expected):
    call = lambda: build_label_map([("m", labels)], {"m": available}, {"m": current}, allow_unavailable=allow)  # noqa: E731
    if isinstance(expected, int):
        with pytest.raises(ServingError, match=re.escape(f"version {expected} of model m, which is not")) as err:
            call()
        assert err.value.code == "FAILED_PRECONDITION"
    else:
        assert call() == ({"m": expected} if expected else {})


def test_shipped_labels_config_parses(tmp_path):
    """serving/models.labels.config, the compose stack's canary example, is a valid ModelServerConfig."""
    from serving.manager import load_model_config_file

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "serving", "models.labels.config")
    shutil.copy(path, tmp_path / "models.labels.config")
    (config,) = load_model_config_file(str(tmp_path / "models.labels.config"))
    assert (config.name, config.policy, config.versions, config.labels) == ("bertbc", "specific", (1,), {"stable": 1})


def test_a_model_listed_twice_is_refused():
    from serving.manager import ModelConfig, ModelManager

    with pytest.raises(ServingError, match="^Illegal to list model a multiple times in config list$"):
        ModelManager([ModelConfig("a", "/x"), ModelConfig("b", "/y"), ModelConfig("a", "/z")], poll_wait_seconds=0)
