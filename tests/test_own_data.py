"""A user's own corpus end to end: a CSV with title/body columns and integer labels mapped to names, a stratified
held-out test set scored through the exported graph, `evaluate` on any file, and one-line data errors."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from tests.conftest import run_trainer, toy_run_flags, toy_text

NAMES = {"1": "World", "2": "Sports", "3": "Business"}
TOPIC = {"World": "politics", "Sports": "sport", "Business": "business"}  # the toy vocabulary of each class


def write_csv(path: Path, rows_per_class: int = 16, seed: int = 0) -> Path:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["title", "body", "topic"])
        for value, name in NAMES.items():
            for _ in range(rows_per_class):
                writer.writerow([f"About {name.lower()}, with a \"quote\"", toy_text(TOPIC[name], rng), int(value)])
    return path


def flags(tmp: Path, cache_dir: Path, data: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--text-column", "title", "--text-column", "body", "--label-column", "topic",
            "--label-names", ",".join(f"{k}={v}" for k, v in NAMES.items()), *toy_run_flags(tmp, cache_dir), *extra]


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory, cache_dir, tiny_encoder):
    tmp = tmp_path_factory.mktemp("own")
    data = write_csv(tmp / "news.csv")
    done = run_trainer(flags(tmp, cache_dir, data, "--test-split", "0.25"))
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp, data, done


def test_csv_with_label_names_trains_exports_and_scores_its_test_set_once(csv_run):
    tmp, _, done = csv_run
    card = json.loads((tmp / "models" / "bertbc" / "1" / "model_card.json").read_text())
    assert card["data"]["class_names"] == ["World", "Sports", "Business"]  # --label-names order, served names
    test = card["test"]
    assert test["documents"] == 12  # a quarter of each class's 16 rows, stratified
    assert [m["support"] for m in test["per_class"].values()] == [4, 4, 4]
    assert sum(map(sum, test["confusion"])) == 12
    assert test["misclassified_count"] == 12 - round(test["accuracy"] * 12)
    assert "held-out test accuracy" in done.stdout.strip().splitlines()[-1]
    assert "data report" in done.stderr and "rows read 48" in done.stderr
    lengths = next(line for line in done.stderr.splitlines() if "word-piece lengths of" in line)
    assert f"word-piece lengths of {48 - 12 - card['data']['val_docs']} training texts" in lengths


def test_the_exported_model_serves_the_datas_own_names(csv_run):
    import tensorflow as tf
    import tensorflow_text  # noqa: F401

    tmp, _, _ = csv_run
    loaded = tf.saved_model.load(str(tmp / "models" / "bertbc" / "1"))
    out = loaded.signatures["serving_default"](text=tf.constant(["About sports, a match"]))
    assert out["label"].numpy()[0].decode() in NAMES.values()
    assert out["probabilities"].shape == (1, 3)


def test_evaluate_scores_any_version_on_any_labelled_file(csv_run, tmp_path):
    tmp, data, _ = csv_run
    out = tmp_path / "report.json"
    done = run_trainer(["evaluate", "--model", str(tmp / "models" / "bertbc"), "--data", str(data),
                        "--text-column", "title", "--text-column", "body", "--label-column", "topic",
                        "--label-names", ",".join(f"{k}={v}" for k, v in NAMES.items()), "--out", str(out)])
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["documents"] == 48 and report["model"].endswith("bertbc/1")
    assert sum(map(sum, report["confusion"])) == 48
    assert f"accuracy {report['accuracy']:.4f}" in done.stdout


@pytest.mark.parametrize("extra, message", [
    (["--label-column", "category"], "unknown column(s) 'category'; the file has columns 'title', 'body', 'topic'"),
    (["--label-names", "1=World,2=Sports"], "--label-names has no name for value(s) '3'"),
])
def test_bad_data_is_one_line_before_training(extra, message, tmp_path, cache_dir):
    data = write_csv(tmp_path / "news.csv", rows_per_class=4)
    args = flags(tmp_path, cache_dir, data)
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        args[args.index(flag) + 1] = value
    done = run_trainer(args)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and message in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    base = tmp_path / "models" / "bertbc"  # the start-up check may create it empty; nothing is published
    assert not base.exists() or not any(base.iterdir())


def test_dedup_drops_validation_rows_that_copy_training_rows(tmp_path):
    from trainer.own_data import load_own_corpus

    data = write_csv(tmp_path / "news.csv", rows_per_class=30)
    # Every row again, in upper case: exact copies always hash to one split, these land anywhere.
    rows = list(csv.reader(open(data, encoding="utf-8")))[1:]
    with open(data, "a", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        for title, body, topic in rows:
            writer.writerow([title.upper(), body + " ", topic])
    kw = dict(text_columns=("title", "body"), label_column="topic", validation_split=0.3, seed=1)
    plain, deduped = load_own_corpus(str(data), **kw), load_own_corpus(str(data), dedup=True, **kw)
    norm = lambda t: " ".join(t.decode().lower().split())  # noqa: E731
    train = {norm(t) for t in plain.train_texts}
    leaked = [t for t in plain.val_texts if norm(t) in train]
    assert leaked, "the fixture must put copies of training rows into validation"
    assert len(deduped.val_texts) == len(plain.val_texts) - len(leaked)
    assert not [t for t in deduped.val_texts if norm(t) in train]
    assert deduped.train_texts == plain.train_texts  # training rows are never removed


def test_several_labels_per_row_are_refused_in_one_line(tmp_path):
    from trainer.data import DataError
    from trainer.own_data import load_own_corpus

    path = tmp_path / "tags.jsonl"
    path.write_text("".join(json.dumps({"text": f"doc {i}", "label": ["a", "b"] if i == 3 else ["ab"[i % 2]]}) + "\n"
                            for i in range(12)))
    with pytest.raises(DataError, match=r"tags.jsonl:4 has several labels .* pass --multi-label"):
        load_own_corpus(str(path))


@pytest.mark.parametrize("data, options, plain", [
    (None, {}, True),  # BBC from the cache: the seed notebook's split
    ("toy", {}, True),
    ("toy", {"test_split": 0.1}, False),
    ("toy", {"dedup": True}, False),
    ("toy", {"encoding": "latin-1"}, False),
    ("missing", {}, True),  # today's "does not exist" message
    ("table.csv", {}, False),
])
def test_which_corpora_keep_the_class_folder_path(data, options, plain, tmp_path):
    from tests.conftest import write_toy_corpus
    from trainer.own_data import is_plain_folder_corpus

    write_toy_corpus(tmp_path / "toy", docs_per_class=2)
    write_csv(tmp_path / "table.csv", rows_per_class=2)
    path = None if data is None else str(tmp_path / data)
    kwargs = {"test_split": 0.0, "test_data": None, "validation_data": None, "encoding": "utf-8", **options}
    assert is_plain_folder_corpus(path, **kwargs) is plain


def test_the_corpus_as_a_csv_trains_the_same_model_as_its_class_folders(toy_corpus_dir, cache_dir, tiny_encoder,
                                                                         tmp_path):
    """Issue 19, point 9: class folders, and the same corpus written as tables by scripts/bbc_to_csv.py (integer
    labels, --label-names, the folders' split as --validation-data), give the same losses to the last digit."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    tables = tmp_path / "tables"
    subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "bbc_to_csv.py"), str(toy_corpus_dir), str(tables)],
                   check=True, capture_output=True)
    histories = {}
    for name, data in (("folders", ["--data", str(toy_corpus_dir)]),
                       ("csv", ["--data", str(tables / "bbc-train.csv"), "--validation-data",
                                str(tables / "bbc-validation.csv"), "--text-column", "title", "--text-column",
                                "body", "--label-column", "label", "--label-names",
                                str(tables / "bbc-label-names.txt")])):
        out = tmp_path / name
        done = run_trainer([*data, *toy_run_flags(out, cache_dir), "--load-check", "off"])
        assert done.returncode == 0, done.stderr[-3000:]
        (history,) = (out / "ckpt").glob("*/history.json")
        histories[name] = [{k: e[k] for k in ("train_loss", "val_loss", "val_accuracy", "confusion")}
                           for e in json.loads(history.read_text())]
        card = json.loads((out / "models" / "bertbc" / "1" / "model_card.json").read_text())
        assert card["data"]["class_names"] == sorted(TOPIC.values())
    assert len(histories["csv"]) == 1 and histories["csv"] == histories["folders"]
