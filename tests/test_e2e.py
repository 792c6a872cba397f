"""Corpus → trainer → SavedModel → dev server → HTTP client, with the REAL export (not a fixture model)."""

from __future__ import annotations

import dataclasses
import shutil
import threading

import pytest
import requests

from serving.client import predict
from tests.serving_fixtures import dev_server, wait_for

TEXTS = {
    "sport": "the coach said the team played a great football match and scored a late goal",
    "business": "shares rose after the bank reported record profit as the market and economy grew",
    "politics": "the minister told parliament the party would win the vote at the next election",
}


def test_raw_text_to_label_over_http_and_hot_swap_under_load(trained, tmp_path):
    from trainer import run

    cfg, result = trained
    base = tmp_path / "models" / "bertbc"
    base.mkdir(parents=True)
    shutil.copytree(result.export_path, base / "1")
    with dev_server([f"--model_base_path={base}", "--model_name=bertbc", "--file_system_poll_wait_seconds=0.2"],
                    str(tmp_path), wait_models=("bertbc",)) as server:
        url = f"{server.url}/v1/models/bertbc:predict"
        # Single raw-text requests, row format.
        for label, text in TEXTS.items():
            r = requests.post(url, json={"instances": [text]}, timeout=30)
            assert r.status_code == 200, r.text
            (row,) = r.json()["predictions"]
            assert row["label"] == label and sum(row["probabilities"]) == pytest.approx(1, abs=1e-4)
        # Batched, columnar, and through the Python client (with invalid UTF-8 sent as b64).
        r = requests.post(url, json={"inputs": {"text": list(TEXTS.values())}}, timeout=30)
        assert r.status_code == 200 and r.json()["outputs"]["label"] == list(TEXTS), r.text
        rows = predict([TEXTS["sport"], b"\xa315.8m profit \xff", ""], url=server.url)
        assert rows[0]["label"] == "sport" and len(rows) == 3

        # Publish version 2 with the real exporter while clients keep asking: no request may fail.
        failures, answered, stop = [], [], threading.Event()

        def client():
            session = requests.Session()
            while not stop.is_set():
                try:
                    r = session.post(url, json={"instances": [TEXTS["business"]]}, timeout=30)
                    (answered if r.status_code == 200 else failures).append(r.status_code)
                except requests.RequestException as e:  # pragma: no cover - recorded as a failure
                    failures.append(repr(e))

        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            again = run.export_only(dataclasses.replace(cfg, model_base_path=str(base), export_only=True))
            assert again.version == 2

            def v2_serving():
                states = requests.get(f"{server.url}/v1/models/bertbc", timeout=5).json()["model_version_status"]
                return {(s["version"], s["state"]) for s in states} >= {("2", "AVAILABLE")}

            wait_for(v2_serving, timeout=60, message="version 2 AVAILABLE")
            before = len(answered)
            wait_for(lambda: len(answered) > before + 5, timeout=30, message="requests after the swap")
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert failures == [] and len(answered) > 10
        meta = requests.get(f"{server.url}/v1/models/bertbc/versions/2/metadata", timeout=5).json()
        sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert set(sig["inputs"]) == {"text"} and sig["inputs"]["text"]["dtype"] == "DT_STRING"
        assert set(sig["outputs"]) == {"probabilities", "class_id", "label"}
