"""The evaluation gate (trainer/gate.py): a worse candidate never reaches the served folder.

Most tests use tiny hand-built SavedModels with bertbc's signature whose quality is known exactly (a keyword
classifier; a "sloppy" one that swaps two classes); one test trains for real (tiny encoder) on shuffled labels.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import tensorflow as tf

from trainer import gate
from trainer.export import export_saved_model

CLASSES = ("business", "politics", "sport")
KEYWORDS = {"business": ("shares", "profit"), "politics": ("election", "minister"), "sport": ("football", "goal")}
SWAPPED = {"business": KEYWORDS["business"], "politics": KEYWORDS["sport"], "sport": KEYWORDS["politics"]}


class KeywordModule(tf.Module):
    """serving_default(text [B]) -> probabilities [B, C], class_id [B], label [B]: most keyword hits wins."""

    def __init__(self, keywords: dict[str, tuple[str, ...]], class_names=CLASSES):
        super().__init__()
        self.class_names = tf.Variable(list(class_names), dtype=tf.string, trainable=False, name="class_names")
        self.patterns = ["|".join(keywords[c]) for c in class_names]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text):
        words = tf.strings.split(tf.strings.lower(text))
        hits = [tf.reduce_sum(tf.cast(tf.strings.regex_full_match(words, p), tf.float32), axis=1)
                for p in self.patterns]
        scores = tf.stack(hits, axis=1)
        class_id = tf.argmax(scores, axis=1, output_type=tf.int64)
        return {"probabilities": tf.nn.softmax(scores), "class_id": class_id,
                "label": tf.gather(self.class_names, class_id)}


def eval_set(docs_per_class: int = 10) -> gate.EvalSet:
    rng = random.Random(0)
    texts, labels = [], []
    for label in CLASSES:
        for _ in range(docs_per_class):
            texts.append(f"the {rng.choice(KEYWORDS[label])} of the year said people".encode())
            labels.append((label,))
    return gate.EvalSet(tuple(texts), tuple(labels), "test set")


def settings(**overrides) -> gate.GateSettings:
    return dataclasses.replace(gate.GateSettings(load_check="off"), **overrides)


def export(base: Path, module, evalset, cfg: gate.GateSettings, run: str = "run-1") -> tuple[int, Path]:
    """export_saved_model with the gate as before_publish, as trainer.run.export_run wires it."""
    return export_saved_model(module, base, before_publish=lambda tmp: gate.guard_publish(
        tmp, eval_set=evalset, base_path=base, model_name="bertbc", run_name=run,
        run_logdir=base.parent / "logs" / run, settings=cfg))


def versions(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir())


@pytest.mark.parametrize("true, predicted, acc, f1", [
    ([("a",), ("b",)], [("a",), ("b",)], 1.0, 1.0),
    ([("a",), ("b",), ("a",), ("a",)], [("a",), ("a",), ("a",), ("b",)], 0.5, 0.5),
    ([("a", "b"), ("c",)], [("a",), ("c",)], 0.5, 0.8),  # multi-label: micro-F1 credits the partial hit
    ([("a", "b")], [("a", "b", "c")], 0.0, 0.8),
])
def test_metrics(true, predicted, acc, f1):
    assert gate.accuracy(true, predicted) == pytest.approx(acc)
    assert gate.micro_f1(true, predicted) == pytest.approx(f1)


@pytest.mark.parametrize("candidate, served, floor, tolerance, passed, figures", [
    (0.90, 0.90, None, 0.01, True, ["0.9000", "0.9000"]),
    (0.89, 0.90, None, 0.01, True, ["0.8900", "0.9000"]),  # exactly one document down: within tolerance
    (0.88, 0.90, None, 0.01, False, ["0.8800", "0.9000", "0.8900"]),
    (0.95, 0.90, 0.96, 0.01, False, ["0.9500", "0.9600"]),  # better than served, but below the floor
    (0.70, None, 0.60, 0.01, True, ["0.7000", "nothing served"]),  # first version: the floor only
    (0.50, None, 0.60, 0.01, False, ["0.5000", "0.6000"]),
    (0.10, None, None, 0.01, True, ["0.1000"]),  # first version, no floor
])
def test_decide(candidate, served, floor, tolerance, passed, figures):
    ok, reason = gate.decide(candidate, served, metric="accuracy", docs=100, served_version=3, min_score=floor,
                             tolerance=tolerance)
    assert ok is passed
    assert "\n" not in reason
    for figure in figures:
        assert figure in reason


def test_first_version_meets_only_the_floor(tmp_path):
    base = tmp_path / "models" / "bertbc"
    with pytest.raises(gate.GateRefused, match=r"candidate accuracy 0\.3333 < --gate-min 0\.9000"):
        export(base, KeywordModule(SWAPPED), eval_set(), settings(min_score=0.9))
    assert not base.exists() or versions(base) == []
    version, path = export(base, KeywordModule(SWAPPED), eval_set(), settings(min_score=0.3))
    assert (version, versions(base)) == (1, ["1"])
    card = json.loads((path / "model_card.json").read_text())
    assert card["gate"]["passed"] is True and card["gate"]["served_version"] is None
    assert card["gate"]["candidate"] == pytest.approx(1 / 3)


def test_worse_candidate_is_refused_and_kept_outside_the_served_folder(tmp_path):
    base = tmp_path / "models" / "bertbc"
    export(base, KeywordModule(KEYWORDS), eval_set(), settings())
    with pytest.raises(gate.GateRefused) as refused:
        export(base, KeywordModule(SWAPPED), eval_set(), settings(), run="bad-run")
    message = str(refused.value)
    assert "\n" not in message
    assert "candidate accuracy 0.3333" in message and "served version 1 1.0000" in message, message
    assert gate.EXIT_GATE_REFUSED == refused.value.exit_code == 3
    assert versions(base) == ["1"]  # no new version, no temp folder left
    rejected = tmp_path / "models" / "rejected" / "bertbc" / "bad-run"
    assert str(rejected) in message
    assert (rejected / "saved_model.pb").is_file() and not (rejected / ".export.lock").exists()
    card = json.loads((rejected / "model_card.json").read_text())
    assert card["gate"]["passed"] is False and card["gate"]["served"] == 1.0
    events = list((tmp_path / "models" / "logs" / "bad-run" / "gate").glob("events.out.tfevents.*"))
    tags = {v.tag for e in tf.compat.v1.train.summary_iterator(str(events[0])) for v in e.summary.value}
    assert {"gate/candidate_accuracy", "gate/served_accuracy", "gate/passed", "gate/report"} <= tags
    # A second refusal of the same run does not overwrite the first one's folder.
    with pytest.raises(gate.GateRefused):
        export(base, KeywordModule(SWAPPED), eval_set(), settings(), run="bad-run")
    assert (rejected.parent / "bad-run-2" / "saved_model.pb").is_file()


def test_better_or_equal_candidate_is_published(tmp_path):
    base = tmp_path / "models" / "bertbc"
    export(base, KeywordModule(SWAPPED), eval_set(), settings())
    version, _ = export(base, KeywordModule(KEYWORDS), eval_set(), settings())
    assert version == 2
    version, path = export(base, KeywordModule(KEYWORDS), eval_set(), settings())
    assert version == 3 and versions(base) == ["1", "2", "3"]
    gate_report = json.loads((path / "model_card.json").read_text())["gate"]
    assert (gate_report["served_version"], gate_report["candidate"], gate_report["served"]) == (2, 1.0, 1.0)
    assert gate_report["tolerance"] == pytest.approx(1 / 30)  # the default: one document of the set


def test_other_label_set_is_refused_unless_gate_off(tmp_path):
    base = tmp_path / "models" / "bertbc"
    export(base, KeywordModule(KEYWORDS), eval_set(), settings())
    renamed = dict(zip(("economy", "politics", "sport"), KEYWORDS.values(), strict=True))
    module = KeywordModule(renamed, class_names=tuple(renamed))
    with pytest.raises(gate.GateRefused, match=r"differ from served version 1.*--gate off.*--model-name"):
        export(base, module, eval_set(), settings())
    assert versions(base) == ["1"]
    version, path = export(base, module, eval_set(), settings(gate="off"))
    assert version == 2
    assert json.loads((path / "model_card.json").read_text())["gate"]["mode"] == "off"


def test_gate_data_with_unknown_labels_is_a_user_error(tmp_path):
    base = tmp_path / "models" / "bertbc"
    data = gate.EvalSet((b"shares up",), (("weather",),), "--gate-data gold.csv")
    with pytest.raises(gate.GateDataError, match=r"\['weather'\].*does not know"):
        export(base, KeywordModule(KEYWORDS), data, settings())


def test_gate_data_file(tmp_path):
    gold = tmp_path / "gold.csv"
    gold.write_text("text,label\nfootball goal,sport\n\"profit, shares\",business\n")
    data = gate.load_gate_data(str(gold))
    assert data.texts == (b"football goal", b"profit, shares") and data.labels == (("sport",), ("business",))
    gold.write_text("text,label\nfootball goal,\n")
    with pytest.raises(gate.GateDataError, match="1 unusable row"):
        gate.load_gate_data(str(gold))


def test_shuffled_label_retrain_is_refused_end_to_end(tmp_path, trained):
    """Real training: one epoch on SHUFFLED training labels is refused against the served, well-trained toy model
    (the shared `trained` run, copied in as version 1) on the same validation split; the CLI ends a run the gate
    refuses with exit code 3."""
    import shutil

    from trainer import cli, run

    good_cfg, good = trained
    base = tmp_path / "models" / "bertbc"
    shutil.copytree(good.export_path, base / "1")
    served = json.loads((base / "1" / "model_card.json").read_text())["export_val_accuracy"]
    cfg = dataclasses.replace(good_cfg, epochs=1, run_name="shuffled", model_base_path=str(base),
                              checkpoint_dir=str(tmp_path / "ckpt"), logdir=str(tmp_path / "logs"), load_check="off",
                              gate="on", gate_min=None, gate_tolerance=None, gate_data=None)
    corpus = run.load_data(cfg)
    labels = list(corpus.train_labels)
    random.Random(1).shuffle(labels)
    with pytest.raises(gate.GateRefused) as refused:
        run.train_and_export(cfg, corpus=dataclasses.replace(corpus, train_labels=tuple(labels)))
    assert f"served version 1 {served:.4f}" in str(refused.value), refused.value
    assert versions(base) == ["1"]
    assert (tmp_path / "models" / "rejected" / "bertbc" / "shuffled" / "saved_model.pb").is_file()
    # The CLI: re-exporting that run against a gold set whose labels are all wrong, with a floor, exits 3.
    gold = tmp_path / "gold.csv"
    gold.write_text("text,label\n" + "".join(f"{t.decode()},{'sport' if lab != 2 else 'business'}\n"
                                             for t, lab in zip(corpus.val_texts, corpus.val_labels, strict=True)))
    argv = ["--export-only", "--run", "shuffled", "--data-dir", cfg.data_dir, "--cache-dir", cfg.cache_dir,
            "--checkpoint-dir", cfg.checkpoint_dir, "--logdir", cfg.logdir, "--model-base-path", str(base),
            "--gate", "on", "--gate-data", str(gold), "--gate-min", "0.5", "--load-check", "off"]
    assert cli.main(argv) == gate.EXIT_GATE_REFUSED
    assert versions(base) == ["1"]
