"""Tiny REST client for the served classifier (dev server or real TF Serving).

    python -m serving.client "Arsenal won the football match" "Shares fell on the market"
"""

from __future__ import annotations

import argparse
import json
import sys

import requests

DEFAULT_URL = "http://127.0.0.1:8501"


def predict(texts: list[str], url: str = DEFAULT_URL, model: str = "bertbc", *, timeout: float = 30.0,
            session: requests.Session | None = None) -> list[dict]:
    """Classifies raw texts; returns one dict per text, e.g. {"label": "sport", "class_id": 3, "probabilities": [...]}.

    Args:
      texts: raw strings (str or bytes; bytes that are not UTF-8 are sent as {"b64": ...}).
      url: server root, e.g. http://127.0.0.1:8501.
      model: model name in /v1/models/NAME.
      timeout: seconds.
      session: optional requests.Session to reuse connections.

    Raises:
      ValueError: empty `texts`.
      RuntimeError: non-200 answer, with the server's {"error": ...} message.
    """
    if not texts:
        raise ValueError("texts must not be empty")
    instances = []
    for text in texts:
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                import base64

                instances.append({"b64": base64.b64encode(text).decode("ascii")})
                continue
        instances.append(text)
    http = session or requests
    response = http.post(f"{url.rstrip('/')}/v1/models/{model}:predict", json={"instances": instances},
                         timeout=timeout)
    if response.status_code != 200:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        raise RuntimeError(f"predict failed with HTTP {response.status_code}: {message}")
    predictions = response.json()["predictions"]
    return [p if isinstance(p, dict) else {"output": p} for p in predictions]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.client", description=__doc__.splitlines()[0])
    parser.add_argument("texts", nargs="+", help="texts to classify")
    parser.add_argument("--url", default=DEFAULT_URL, help="server root URL")
    parser.add_argument("--model", default="bertbc", help="model name")
    args = parser.parse_args(argv)
    try:
        results = predict(args.texts, url=args.url, model=args.model)
    except (RuntimeError, requests.RequestException) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for text, result in zip(args.texts, results, strict=True):
        print(json.dumps({"text": text[:80], **result}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
