"""`--class-weights balanced`: the weights follow the training split's counts, scale each example's loss in the
real train step (multi-label: each label's positive term), are recorded in the model card, and a run trained with them resumes only with them."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tests.conftest import toy_config, write_toy_corpus
from trainer.weights import balanced, by_name


def test_balanced_weights_are_n_over_classes_times_count():
    # 6 rows: class 0 x3, class 1 x1, class 2 x2, class 3 none (k counts the 3 classes that have rows).
    assert balanced([0, 0, 0, 1, 2, 2], 4) == pytest.approx([6 / 9, 6 / 3, 6 / 6, 0.0])
    assert balanced([0, 1, 0, 1], 2) == [1.0, 1.0]  # balanced data: no change


def test_multi_label_weights_count_the_rows_that_carry_each_label():
    # label 0 on 2 rows, 1 and 2 on one each (4 assignments over 3 labels); label 3 on none; a row may have none.
    assert balanced([(0, 1), (0,), (2,), ()], 4) == pytest.approx([4 / 6, 4 / 3, 4 / 3, 0.0])
    cfg = types.SimpleNamespace(class_weights="balanced")
    corpus = types.SimpleNamespace(train_labels=((0, 1), (0,), (0, 1)), class_names=("a", "b"))
    assert by_name(cfg, corpus) == pytest.approx({"a": 5 / 6, "b": 5 / 4})


def test_multi_label_weights_scale_each_labels_positive_term(tiny_encoder, toy_corpus_dir):
    """Every row labelled 1 only: a weight on label 0 (only "no" terms) changes nothing, weights of 1 change
    nothing, and a weight w on label 1 adds (w - 1) x its positive term, so the loss grows linearly in w."""
    from trainer.data import load_corpus
    from trainer.loop import make_steps
    from trainer.model import build_classifier
    from trainer.pipeline import make_train_dataset
    from trainer.preprocessing import Preprocessor

    corpus = load_corpus(toy_corpus_dir, validation_split=0.2, seed=42)
    k = len(corpus.class_names)
    texts = list(corpus.train_texts[:4])
    pre = Preprocessor(tiny_encoder.preprocess_handle, seq_length=32)
    targets = np.zeros((len(texts), k), np.float32)
    targets[:, 1] = 1.0
    batch = next(iter(make_train_dataset(texts, targets, pre, batch_size=4, seed=0)))
    strategy = tf.distribute.get_strategy()
    model = build_classifier(tiny_encoder.encoder_handle, k, seq_length=32, pooling="mean", dropout=0.1)
    flags = tf.zeros([3], tf.int32)
    rest = [1.0] * (k - 2)
    variants = {"none": None, "ones": [1.0] * k, "label0": [3.0, 1.0, *rest], "w3": [1.0, 3.0, *rest],
                "w5": [1.0, 5.0, *rest]}
    losses = {}
    for name, class_weights in variants.items():
        # A fresh optimizer with learning rate 0 per variant: same step 0, so the same dropout masks and weights.
        optimizer = tf_keras.optimizers.Adam(learning_rate=0.0)
        steps = make_steps(strategy, model, optimizer, seed=7, class_weights=class_weights, multi_label=True)
        losses[name] = float(steps.train_step_flags(batch, flags)[0])
    assert losses["ones"] == pytest.approx(losses["none"], rel=1e-5)
    assert losses["label0"] == pytest.approx(losses["none"], rel=1e-5)
    assert losses["w3"] > losses["none"] * 1.05
    assert losses["w5"] - losses["none"] == pytest.approx(2 * (losses["w3"] - losses["none"]), rel=1e-4)


def test_weights_scale_each_examples_loss_in_the_train_step(tiny_encoder, toy_corpus_dir):
    from trainer.data import load_corpus
    from trainer.loop import make_steps
    from trainer.model import build_classifier
    from trainer.pipeline import make_train_dataset
    from trainer.preprocessing import Preprocessor

    corpus = load_corpus(toy_corpus_dir, validation_split=0.2, seed=42)
    k = len(corpus.class_names)
    texts = [t for t, y in zip(corpus.train_texts, corpus.train_labels, strict=True) if y == 1][:4]
    pre = Preprocessor(tiny_encoder.preprocess_handle, seq_length=32)
    batch = next(iter(make_train_dataset(texts, [1] * len(texts), pre, batch_size=4, seed=0)))
    strategy = tf.distribute.get_strategy()
    model = build_classifier(tiny_encoder.encoder_handle, k, seq_length=32, pooling="mean", dropout=0.1)
    flags = tf.zeros([3], tf.int32)
    losses = {}
    for name, class_weights in {"none": None, "weighted": [0.5, 3.0, *([1.0] * (k - 2))]}.items():
        # A fresh optimizer with learning rate 0 per variant: same step 0, so the same dropout masks and weights.
        optimizer = tf_keras.optimizers.Adam(learning_rate=0.0)
        steps = make_steps(strategy, model, optimizer, seed=7, class_weights=class_weights)
        loss, _ = steps.train_step_flags(batch, flags)
        losses[name] = float(loss)
    assert losses["none"] > 0
    assert losses["weighted"] == pytest.approx(3.0 * losses["none"], rel=1e-5)


def test_balanced_run_records_its_weights_and_resumes_only_with_them(tmp_path, cache_dir, tiny_encoder):
    from trainer import run
    from trainer.config import TrainConfig

    corpus_dir = write_toy_corpus(tmp_path / "bbc", docs_per_class=12)
    rare = sorted((corpus_dir / "sport").glob("*.txt"))
    for path in rare[4:]:  # sport: 4 documents against 12 in every other class
        path.unlink()
    cfg = toy_config(tmp_path, corpus_dir, cache_dir, epochs=1, class_weights="balanced", gate="off")
    run.train_and_export(cfg)
    card = json.loads(next(Path(cfg.model_base_path).glob("*/model_card.json")).read_text())
    counts = card["data"]["train_class_counts"]
    n, k = sum(counts.values()), len(counts)
    assert card["data"]["class_weights"] == pytest.approx({c: n / (k * m) for c, m in counts.items()}, rel=1e-5)
    assert card["data"]["class_weights"]["sport"] > 2 * card["data"]["class_weights"]["business"]

    unweighted = TrainConfig(**{**cfg.__dict__, "class_weights": "none"}).validate()
    schedule = run.make_schedule(cfg.learning_rate, cfg.warmup_fraction, train_docs=n, batch_size=cfg.batch_size,
                                 epochs=cfg.epochs)
    old, new = run.run_settings(cfg, "f", schedule), run.run_settings(unweighted, "f", schedule)
    assert "--class-weights 'balanced' (run) vs None (now)" in run.describe_differences(old, new)
    assert "class_weights" not in new, "an unweighted run's settings are those of runs made before the flag"


def test_unknown_class_weights_mode_is_refused_in_one_line():
    from tests.conftest import run_trainer

    result = run_trainer(["--class-weights", "inverse"], timeout=120)
    assert result.returncode == 2
    assert "--class-weights" in result.stderr and "balanced" in result.stderr
    assert "Traceback" not in result.stderr
