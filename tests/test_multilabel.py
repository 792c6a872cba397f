"""Multi-label training (`--multi-label`): targets and metrics, thresholds tuned on validation, a CSV with
'|'-separated labels trained end to end, the exported `labels` output, the held-out test report, `evaluate`,
TensorBoard's tags, the gate's metric, and the dev server answering with the data's own label sets."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TOY_KEYWORDS, run_trainer, toy_run_flags, toy_text
from trainer.multilabel import NEUTRAL_THRESHOLD, THRESHOLD_GRID, label_metrics, multi_hot, tune_thresholds

TOPICS = sorted(TOY_KEYWORDS)  # business, politics, sport


def f1_by_counts(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def test_multi_hot_marks_each_rows_labels():
    targets = multi_hot([(0, 2), (), (1,)], 3)
    assert targets.dtype == np.float32
    assert targets.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]


def test_label_metrics_follow_the_definitions():
    rng = np.random.default_rng(0)
    true = rng.random((50, 4)) < 0.3
    predicted = rng.random((50, 4)) < 0.4
    true[:, 3] = False  # a label no row has: excluded from macro-F1
    m = label_metrics(true, predicted, ["a", "b", "c", "d"])
    tp, fp, fn = ((true & predicted).sum(), (~true & predicted).sum(), (true & ~predicted).sum())
    assert m["micro_f1"] == pytest.approx(f1_by_counts(tp, fp, fn))
    per_label = [f1_by_counts((true[:, j] & predicted[:, j]).sum(), (~true[:, j] & predicted[:, j]).sum(),
                              (true[:, j] & ~predicted[:, j]).sum()) for j in range(3)]
    assert m["macro_f1"] == pytest.approx(np.mean(per_label))
    assert m["subset_accuracy"] == pytest.approx(np.mean([(t == p).all() for t, p in zip(true, predicted, strict=True)]))
    assert m["per_class"]["a"]["support"] == int(true[:, 0].sum())
    assert m["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_thresholds_are_tuned_per_label_on_validation_and_default_to_neutral():
    rng = np.random.default_rng(1)
    true = np.zeros((200, 3), bool)
    true[:100, 0] = True
    true[::2, 1] = True
    probabilities = np.zeros((200, 3))
    probabilities[:, 0] = np.where(true[:, 0], 0.3, 0.1) + rng.random(200) * 0.05  # separable at ~0.2, not 0.5
    probabilities[:, 1] = np.where(true[:, 1], 0.9, 0.1)
    probabilities[:, 2] = rng.random(200)  # label 2 has no positive row
    thresholds = tune_thresholds(true, probabilities)
    assert 0.15 <= thresholds[0] <= 0.3 + 1e-6 and min(abs(thresholds[0] - g) for g in THRESHOLD_GRID) < 1e-6
    decided = probabilities[:, 0] >= thresholds[0]
    assert (decided == true[:, 0]).all()  # the tuned threshold separates what 0.5 misses entirely
    assert not (probabilities[:, 0] >= NEUTRAL_THRESHOLD).any()
    assert thresholds[1] == pytest.approx(NEUTRAL_THRESHOLD)  # every threshold in (0.1, 0.9] is perfect: ties -> 0.5
    assert thresholds[2] == pytest.approx(NEUTRAL_THRESHOLD)


def write_multi_label_csv(path: Path, rows: int = 96, seed: int = 0) -> Path:
    """Toy articles about one or two topics, labelled with every topic they are about ('a|b')."""
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "tags"])
        for i in range(rows):
            topics = sorted(rng.sample(TOPICS, 1 if i % 3 == 0 else 2))
            writer.writerow([f"row-{i}", " ".join(toy_text(t, rng) for t in topics), "|".join(topics)])
    return path


def flags(tmp: Path, cache_dir: Path, data: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--label-column", "tags", "--multi-label", "--label-separator", "|",
            *toy_run_flags(tmp, cache_dir, epochs=3), "--serve-windows", "1", "--load-check", "off", *extra]


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory, cache_dir, tiny_encoder):
    tmp = tmp_path_factory.mktemp("multi")
    data = write_multi_label_csv(tmp / "tagged.csv")
    done = run_trainer(flags(tmp, cache_dir, data, "--test-split", "0.2", "--class-weights", "balanced"))
    assert done.returncode == 0, done.stderr[-3000:]
    card = json.loads((tmp / "models" / "bertbc" / "1" / "model_card.json").read_text())
    return tmp, data, done, card


def test_card_records_thresholds_metrics_and_the_labels_output(multi_run):
    _, _, done, card = multi_run
    assert card["multi_label"] is True and card["data"]["class_names"] == TOPICS
    assert set(card["thresholds"]) == set(TOPICS)
    assert all(min(abs(t - g) for g in THRESHOLD_GRID) < 1e-6 for t in card["thresholds"].values())
    assert card["signature"]["serving_default"]["outputs"]["labels"] == "DT_STRING [-1, 3]"
    assert card["export_val_micro_f1"] == pytest.approx(card["best_val_accuracy"], abs=1e-6)
    assert [e["val_micro_f1"] for e in card["epochs"] if e["improved"]][-1] == pytest.approx(card["best_val_accuracy"])
    assert "confusion_matrix" not in card
    counts = card["data"]["train_class_counts"]  # rows carrying each label
    assert counts["sport"] > 0
    n, k = sum(counts.values()), len(counts)  # --class-weights balanced: per label, on its positive term
    assert card["data"]["class_weights"] == pytest.approx({c: n / (k * m) for c, m in counts.items()}, rel=1e-5)
    assert "best val micro-F1" in done.stdout and "held-out test micro-F1" in done.stdout


def test_held_out_test_is_scored_on_label_sets(multi_run):
    from trainer.own_data import load_own_corpus

    _, data, _, card = multi_run
    test = card["test"]
    corpus = load_own_corpus(str(data), label_column="tags", multi_label=True, label_separator="|", test_split=0.2)
    assert test["multi_label"] is True and test["documents"] == len(corpus.test_texts) > 0
    support = {name: sum(i in ids for ids in corpus.test_labels) for i, name in enumerate(corpus.class_names)}
    assert {n: m["support"] for n, m in test["per_class"].items()} == support
    rows = {f"{data}:{n}": set(r["tags"].split("|"))  # a row's id: <file>:<data row>
            for n, r in enumerate(csv.DictReader(open(data, encoding="utf-8")), start=1)}
    for error in test["misclassified"]:
        assert set(error["true"]) == rows[error["id"]] and set(error["predicted"]) != rows[error["id"]]
    assert test["subset_accuracy"] == pytest.approx(1 - test["misclassified_count"] / test["documents"])


def test_served_labels_are_the_names_above_their_thresholds(multi_run):
    import tensorflow as tf
    import tensorflow_text  # noqa: F401

    tmp, _, _, card = multi_run
    loaded = tf.saved_model.load(str(tmp / "models" / "bertbc" / "1"))
    rng = random.Random(5)
    texts = [toy_text("sport", rng) + " " + toy_text("business", rng), toy_text("politics", rng), "", "x" * 500]
    out = loaded.signatures["serving_default"](text=tf.constant(texts))
    probabilities, labels = out["probabilities"].numpy(), out["labels"].numpy()
    assert labels.shape == (4, 3) and probabilities.shape == (4, 3)
    assert ((probabilities > 0) & (probabilities < 1)).all()  # sigmoids, not a softmax over labels
    thresholds = np.array([card["thresholds"][n] for n in TOPICS])
    for p, row, label in zip(probabilities, labels, out["label"].numpy(), strict=True):
        names = [n.decode() for n in row]
        above = [TOPICS[j] for j in np.argsort(-p, kind="stable") if p[j] >= thresholds[j]]
        assert names == above + [""] * (3 - len(above))
        assert label.decode() == TOPICS[int(np.argmax(p))]


def test_tensorboard_has_micro_f1_and_per_label_figures(multi_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tmp, _, _, _ = multi_run
    (run_dir,) = (tmp / "logs").iterdir()
    validation = EventAccumulator(str(run_dir / "validation"), size_guidance={"tensors": 0}).Reload()
    tags = set(validation.Tags()["tensors"])
    assert {"val_micro_f1", "val_macro_f1", "label_precision/sport", "label_recall/business"} <= tags
    assert len(validation.Tensors("val_micro_f1")) == 3
    test = EventAccumulator(str(run_dir / "test"), size_guidance={"tensors": 0}).Reload()
    assert {"test/micro_f1", "test/subset_accuracy", "test/macro_f1"} <= set(test.Tags()["tensors"])


def test_evaluate_reports_label_sets(multi_run, tmp_path):
    tmp, data, _, _ = multi_run
    out = tmp_path / "report.json"
    done = run_trainer(["evaluate", "--model", str(tmp / "models" / "bertbc"), "--data", str(data),
                        "--label-column", "tags", "--label-separator", "|", "--out", str(out)])
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["multi_label"] is True and report["documents"] == 96
    assert f"micro-F1 {report['micro_f1']:.4f}" in done.stdout
    assert sum(m["support"] for m in report["per_class"].values()) == sum(
        len(r["tags"].split("|")) for r in csv.DictReader(open(data, encoding="utf-8")))


def test_gate_scores_a_multi_label_corpus_on_micro_f1(multi_run):
    from trainer.gate import eval_set_from_corpus, metric_for
    from trainer.own_data import load_own_corpus

    _, data, _, _ = multi_run
    corpus = load_own_corpus(str(data), label_column="tags", multi_label=True, label_separator="|", test_split=0.2)
    eval_set = eval_set_from_corpus(corpus)
    assert eval_set.source == "test split" and metric_for(eval_set) == "micro_f1"
    assert all(set(labels) <= set(TOPICS) and labels for labels in eval_set.labels)


def test_dev_server_answers_label_sets(multi_run, tmp_path):
    import requests

    from tests.serving_fixtures import dev_server

    tmp, _, _, _ = multi_run
    base = tmp / "models" / "bertbc"
    with dev_server([f"--model_base_path={base}", "--model_name=bertbc"], str(tmp_path), ("bertbc",)) as server:
        r = requests.post(f"{server.url}/v1/models/bertbc:predict", timeout=60,
                          json={"instances": ["the match and the goal of the team", "profit at the bank"]})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert [len(p["labels"]) for p in predictions] == [3, 3]
    assert all(set(p["labels"]) <= set(TOPICS) | {""} for p in predictions)


def test_export_only_re_exports_with_the_same_thresholds_and_passes_the_gate_on_micro_f1(multi_run):
    tmp, data, _, card = multi_run
    args = flags(tmp, Path(card["config"]["cache_dir"]), data, "--test-split", "0.2", "--export-only")
    done = run_trainer(args)
    assert done.returncode == 0, done.stderr[-3000:]
    again = json.loads((tmp / "models" / "bertbc" / "2" / "model_card.json").read_text())
    assert again["thresholds"] == card["thresholds"] and again["source"] == "export-only"
    assert again["gate"]["metric"] == "micro_f1" and again["gate"]["served_version"] == 1
    assert again["gate"]["candidate"] == pytest.approx(again["gate"]["served"])  # the same checkpoint


@pytest.mark.parametrize("output_format", ["jsonl", "parquet"])
def test_batch_scoring_writes_each_rows_label_set(multi_run, tmp_path, output_format):
    import pyarrow.parquet as pq
    import tensorflow as tf
    import tensorflow_text  # noqa: F401

    from batch.cli import main

    tmp, data, _, _ = multi_run
    out = tmp_path / "out"
    assert main(["--model", str(tmp / "models" / "bertbc"), "--input", str(data), "--output", str(out),
                 "--id-column", "id", "--output-format", output_format]) == 0
    if output_format == "parquet":
        records = [r for shard in sorted(out.glob("predictions-*.parquet")) for r in pq.read_table(shard).to_pylist()]
    else:
        records = [json.loads(line) for shard in sorted(out.glob("predictions-*.jsonl"))
                   for line in shard.read_text().splitlines()]
    assert len(records) == 96
    by_id = {r["id"]: r for r in records}
    rows = list(csv.DictReader(open(data, encoding="utf-8")))
    loaded = tf.saved_model.load(str(tmp / "models" / "bertbc" / "1"))
    want = loaded.signatures["serving_default"](text=tf.constant([r["text"] for r in rows[:8]]))["labels"].numpy()
    for row, names in zip(rows[:8], want, strict=True):
        assert by_id[row["id"]]["labels"] == [n.decode() for n in names if n]


@pytest.mark.parametrize("args, message", [
    (["--label-separator", "|"], "--label-separator splits a cell into several labels: it needs --multi-label"),
])
def test_contradicting_flags_are_one_line(args, message, tmp_path):
    done = run_trainer(["--data", str(tmp_path / "none.csv"), *args])
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
