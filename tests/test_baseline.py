"""benchmarks/bench_baseline.py: TF-IDF + logistic regression on the trainer's own split, single- and multi-label,
and its verdict against a model card's figures on the same rows."""

from __future__ import annotations

import json
import re

import pytest

from benchmarks.bench_baseline import main
from tests.test_multilabel import write_multi_label_csv
from tests.test_own_data import NAMES, write_csv


def run(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_single_label_baseline_scores_the_trainers_test_rows(tmp_path, capsys):
    data = write_csv(tmp_path / "news.csv", rows_per_class=30)
    args = ["--data", str(data), "--text-column", "title", "--text-column", "body", "--label-column", "topic",
            "--label-names", ",".join(f"{k}={v}" for k, v in NAMES.items()), "--test-split", "0.2"]
    out = run(capsys, *args)
    assert "scored on 18 test rows" in out  # a fifth of 90 rows, stratified: what the trainer holds out
    accuracy = float(re.search(r"accuracy ([0-9.]+)", out).group(1))
    assert accuracy > 0.8  # each class has its own keywords: a bag of words learns them

    card = tmp_path / "model" / "model_card.json"
    card.parent.mkdir()
    for model_accuracy, verdict in ((min(accuracy + 0.05, 1.0), "beats"), (accuracy - 0.1, "does NOT beat")):
        card.write_text(json.dumps({"test": {"accuracy": model_accuracy, "macro_f1": 0.5}}))
        if model_accuracy == accuracy:
            continue
        assert f"-> {verdict} the baseline" in run(capsys, *args, "--model", str(card.parent))


def test_multi_label_baseline_reports_micro_f1(tmp_path, capsys):
    data = write_multi_label_csv(tmp_path / "tagged.csv", rows=120)
    out = run(capsys, "--data", str(data), "--label-column", "tags", "--multi-label", "--label-separator", "|",
              "--test-split", "0.2")
    figures = dict(re.findall(r"(micro_f1|macro_f1|subset_accuracy) ([0-9.]+)", out))
    assert set(figures) == {"micro_f1", "macro_f1", "subset_accuracy"}
    assert float(figures["micro_f1"]) > 0.7


def test_a_model_card_without_test_figures_is_refused(tmp_path, capsys):
    data = write_csv(tmp_path / "news.csv", rows_per_class=10)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_card.json").write_text("{}")
    with pytest.raises(SystemExit, match="no test figures"):
        main(["--data", str(data), "--text-column", "title", "--text-column", "body", "--label-column", "topic",
              "--test-split", "0.2", "--model", str(tmp_path / "m")])
