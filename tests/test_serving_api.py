"""Contract suite for TF Serving's REST API: exact status codes, error texts and JSON shapes.

Runs against the dev server (started once for the module) or, with BERTBC_SERVING_URL set, against any running
server (e.g. real tensorflow_model_server serving `python tests/serving_fixtures.py DIR` as model bertbc).
"""

from __future__ import annotations

import base64
import json
import math

import pytest
import requests
from serving_fixtures import MODEL, SERVING_URL, build_keyword_model, dev_server, expected_label

PREDICT = f"/v1/models/{MODEL}:predict"


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    if SERVING_URL:
        yield SERVING_URL
        return
    root = tmp_path_factory.mktemp("serving_api")
    build_keyword_model(str(root / "base" / "1"))
    args = [f"--model_name={MODEL}", f"--model_base_path={root / 'base'}", "--file_system_poll_wait_seconds=0.2"]
    with dev_server(args, str(root), wait_models=(MODEL,)) as server:
        yield server.url


@pytest.fixture(scope="module")
def http():
    with requests.Session() as session:
        yield session


def post(http, url, path, body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(url + path, data=data, timeout=30)


# (id, method, path, body, status, exact error message)
ERROR_CASES = [
    ("empty-body", "POST", PREDICT, b"", 400, "JSON Parse error: The document is empty"),
    ("invalid-json", "POST", PREDICT, b"hello", 400, "JSON Parse error: Invalid value. at offset: 0"),
    ("unclosed-object", "POST", PREDICT, b"{", 400, "JSON Parse error: Missing a name for object member. at offset: 1"),
    ("missing-colon", "POST", PREDICT, b'{"instances" ["a"]}', 400,
     "JSON Parse error: Missing a colon after a name of object member. at offset: 13"),
    ("not-object", "POST", PREDICT, b"[1,2]", 400, "JSON Value: [1,2] Is not object"),
    ("both-keys", "POST", PREDICT, {"instances": ["a"], "inputs": ["a"]}, 400,
     """JSON Value: {"instances":["a"],"inputs":["a"]} Not formatted correctly expecting only one of 'inputs' or """
     """'instances' keys to exist """),
    ("neither-key", "POST", PREDICT, {"foo": 1}, 400, "Missing 'inputs' or 'instances' key"),
    ("empty-instances", "POST", PREDICT, {"instances": []}, 400,
     """JSON Value: {"instances":[]} No values in 'instances' array"""),
    ("instances-not-list", "POST", PREDICT, {"instances": "a"}, 400,
     """JSON Value: {"instances":"a"} Expecting 'instances' to be an list/array"""),
    ("wrong-type", "POST", PREDICT, {"instances": [1]}, 400,
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: 1 Type: Number is "
     "not of expected type: string"),
    ("wrong-type-second", "POST", PREDICT, {"instances": ["a", True]}, 400,
     "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: true Type: True is "
     "not of expected type: string"),
    ("wrong-input-name", "POST", PREDICT, {"instances": [{"foo": "a"}]}, 400,
     "Failed to process element: 0 key: foo of 'instances' list. Error: INVALID_ARGUMENT: JSON object: does not "
     "have named input: foo"),
    ("mixed-object-and-value", "POST", PREDICT, {"instances": [{"text": "a"}, "b"]}, 400,
     "Expecting object but got list at item 1 of input list"),
    ("columnar-missing-name", "POST", PREDICT, {"inputs": {"foo": ["a"]}}, 400,
     "Missing named input: text in 'inputs' object."),
    ("bad-base64", "POST", PREDICT, {"instances": [{"b64": "!!!"}]}, 400,
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: Unable to base64 decode"),
    ("signature-not-string", "POST", PREDICT, {"signature_name": 1, "instances": ["a"]}, 400,
     """JSON Value: {"signature_name":1,"instances":["a"]} not formatted correctly. 'signature_name' key must """
     """be a string value."""),
    ("unknown-signature", "POST", PREDICT, {"signature_name": "nope", "instances": ["a"]}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ("unknown-model", "POST", "/v1/models/nomodel:predict", {"instances": ["a"]}, 404,
     "Servable not found for request: Latest(nomodel)"),
    ("bad-json-before-model-lookup", "POST", "/v1/models/nomodel:predict", b"x", 400,
     "JSON Parse error: Invalid value. at offset: 0"),
    ("unknown-version", "POST", f"/v1/models/{MODEL}/versions/7:predict", {"instances": ["a"]}, 404,
     f"Servable not found for request: Specific({MODEL}, 7)"),
    ("version-overflow", "POST", f"/v1/models/{MODEL}/versions/99999999999999999999:predict", {"instances": ["a"]},
     400, "Failed to convert version: 99999999999999999999 to numeric."),
    ("unknown-label", "POST", f"/v1/models/{MODEL}/labels/stable:predict", {"instances": ["a"]}, 400,
     "Unrecognized servable version label: stable"),
    ("get-predict", "GET", PREDICT, None, 400, f"Malformed request: GET {PREDICT}"),
    ("post-metadata", "POST", f"/v1/models/{MODEL}/metadata", {}, 400,
     f"Malformed request: POST /v1/models/{MODEL}/metadata"),
    ("singular-version", "GET", f"/v1/models/{MODEL}/version/1", None, 400,
     f"Malformed request: GET /v1/models/{MODEL}/version/1"),
    ("non-numeric-version", "GET", f"/v1/models/{MODEL}/versions/HELLO", None, 400,
     f"Malformed request: GET /v1/models/{MODEL}/versions/HELLO"),
    ("version-and-label", "GET", f"/v1/models/{MODEL}/versions/1/labels/x", None, 400,
     f"Malformed request: GET /v1/models/{MODEL}/versions/1/labels/x"),
    ("missing-model-name", "GET", "/v1/models", None, 400, "Missing model name in request."),
    ("status-unknown-model", "GET", "/v1/models/nomodel", None, 404, "Could not find any versions of model nomodel"),
    ("status-unknown-version", "GET", f"/v1/models/{MODEL}/versions/7", None, 404,
     f"Could not find version 7 of model {MODEL}"),
    ("metadata-unknown-model", "GET", "/v1/models/nomodel/metadata", None, 404,
     "Servable not found for request: Latest(nomodel)"),
    ("classify-without-examples", "POST", f"/v1/models/{MODEL}:classify", {"instances": ["a"]}, 400,
     """JSON Value: {"instances":["a"]} When method is classify, key 'examples' is expected and was not found"""),
    ("classify-predict-signature", "POST", f"/v1/models/{MODEL}:classify", {"examples": [{"text": "a"}]}, 400,
     "Expected one or two output Tensors, found 3"),
    ("regress-predict-signature", "POST", f"/v1/models/{MODEL}:regress", {"examples": [{"text": "a"}]}, 400,
     "Expected one output Tensor."),
]


@pytest.mark.parametrize("method,path,body,status,message", [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_error_status_and_message(url, http, method, path, body, status, message):
    if method == "GET":
        r = http.get(url + path, timeout=30)
    else:
        r = post(http, url, path, body)
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json() == {"error": message}


@pytest.mark.parametrize("path", ["/", "/healthz", "/v2/models/bertbc", "/models/bertbc:predict"])
def test_non_v1_path_is_plain_404(url, http, path):
    r = http.get(url + path, timeout=10)
    assert r.status_code == 404
    assert not r.headers.get("Content-Type", "").startswith("application/json")


TEXTS = [
    "Arsenal won the football match and the cup",
    "Shares rose as the market and economy grew",
    "The minister called an election vote",
    "A new film and album from the actor",
    "The software runs on any computer or phone",
]


def check_prediction(pred: dict, text: str) -> None:
    assert set(pred) == {"probabilities", "class_id", "label"}
    assert pred["label"] == expected_label(text)
    assert len(pred["probabilities"]) == 5
    assert math.isclose(sum(pred["probabilities"]), 1.0, rel_tol=1e-5)
    assert pred["probabilities"].index(max(pred["probabilities"])) == pred["class_id"]


@pytest.mark.parametrize("texts", [TEXTS[:1], TEXTS], ids=["single", "batch"])
def test_row_predict_labels(url, http, texts):
    r = post(http, url, PREDICT, {"instances": texts})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert len(predictions) == len(texts)
    for pred, text in zip(predictions, texts, strict=True):
        check_prediction(pred, text)


def test_row_predict_named_objects_and_signature_name(url, http):
    body = {"signature_name": "serving_default", "instances": [{"text": t} for t in TEXTS]}
    r = post(http, url, PREDICT, body)
    assert r.status_code == 200, r.text
    assert [p["label"] for p in r.json()["predictions"]] == [expected_label(t) for t in TEXTS]


@pytest.mark.parametrize("inputs", [TEXTS, {"text": TEXTS}], ids=["plain-list", "named"])
def test_columnar_predict(url, http, inputs):
    r = post(http, url, PREDICT, {"inputs": inputs})
    assert r.status_code == 200, r.text
    outputs = r.json()["outputs"]
    assert set(outputs) == {"probabilities", "class_id", "label"}
    assert outputs["label"] == [expected_label(t) for t in TEXTS]
    assert len(outputs["probabilities"]) == len(TEXTS) and all(len(p) == 5 for p in outputs["probabilities"])


def test_versioned_url_and_case_insensitive_keywords(url, http):
    r1 = post(http, url, f"/v1/models/{MODEL}/versions/1:predict", {"instances": TEXTS[:1]})
    r2 = post(http, url, f"/V1/MODELS/{MODEL}/VERSIONS/1:PREDICT", {"instances": TEXTS[:1]})
    assert r1.status_code == r2.status_code == 200
    assert r1.json() == r2.json()


@pytest.mark.parametrize(
    "instance,label",
    [
        ({"b64": base64.b64encode(b"\xff\xfe football match \xc3").decode()}, "sport"),
        ({"b64": base64.b64encode("Elección del ministro minister".encode()).decode()}, "politics"),
        ("", "business"),  # no keyword: uniform scores, argmax picks class 0
        ("日本語のテキスト software", "tech"),
    ],
    ids=["invalid-utf8-b64", "utf8-b64", "empty-string", "unicode"],
)
def test_string_edge_cases(url, http, instance, label):
    r = post(http, url, PREDICT, {"instances": [instance]})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["label"] == label


def test_empty_string_probabilities_are_written_like_tf_serving(url, http):
    r = post(http, url, PREDICT, {"instances": [""]})
    assert r.status_code == 200
    assert r.json()["predictions"][0]["probabilities"] == [0.2] * 5
    assert "0.2" in r.text and "0.200000" not in r.text  # float32 0.2 written as 0.2, not 0.20000000298


def test_large_batch(url, http):
    texts = [TEXTS[i % len(TEXTS)] for i in range(1000)]
    r = post(http, url, PREDICT, {"instances": texts})
    assert r.status_code == 200
    labels = [p["label"] for p in r.json()["predictions"]]
    assert labels == [expected_label(t) for t in texts]


def test_megabyte_text(url, http):
    text = ("filler words " * 80_000)[:1_000_000] + " football"
    r = post(http, url, PREDICT, {"instances": [text]})
    assert r.status_code == 200, r.text[:300]
    assert r.json()["predictions"][0]["label"] == "sport"


def test_model_status_shape(url, http):
    r = http.get(f"{url}/v1/models/{MODEL}", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    statuses = r.json()["model_version_status"]
    versions = [s["version"] for s in statuses]
    assert all(isinstance(v, str) for v in versions)
    assert versions == sorted(versions, key=int, reverse=True)
    available = [s for s in statuses if s["state"] == "AVAILABLE"]
    assert available and available[0]["status"] == {"error_code": "OK", "error_message": ""}
    one = http.get(f"{url}/v1/models/{MODEL}/versions/{available[0]['version']}", timeout=10).json()
    assert one == {"model_version_status": [available[0]]}


def test_metadata_shape(url, http):
    r = http.get(f"{url}/v1/models/{MODEL}/metadata", timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert body["model_spec"]["name"] == MODEL and body["model_spec"]["signature_name"] == ""
    assert isinstance(body["model_spec"]["version"], str)
    sig = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    text = sig["inputs"]["text"]
    assert text["dtype"] == "DT_STRING"
    assert text["tensor_shape"] == {"dim": [{"size": "-1", "name": ""}], "unknown_rank": False}
    dtypes = {name: out["dtype"] for name, out in sig["outputs"].items()}
    assert dtypes == {"probabilities": "DT_FLOAT", "class_id": "DT_INT64", "label": "DT_STRING"}
    assert [d["size"] for d in sig["outputs"]["probabilities"]["tensor_shape"]["dim"]] == ["-1", "5"]
    versioned = http.get(f"{url}/v1/models/{MODEL}/versions/{body['model_spec']['version']}/metadata", timeout=10)
    assert versioned.json() == body
