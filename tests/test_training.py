"""The trainer end to end on a toy corpus with the tiny random encoder: learning, TensorBoard, checkpoints,
resume after kill -9, export parity, versioning, op set, and the CLI contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from tensorboard.backend.event_processing import event_accumulator

from tests.conftest import run_trainer, toy_config, trainer_flags, write_toy_corpus
from trainer import summaries
from trainer.checkpoints import Checkpoints, make_state
from trainer.config import TrainConfig


def test_loss_falls_and_learns_the_toy_task(trained):
    _, result = trained
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 4
    assert losses[-1] < losses[0] * 0.7, losses
    assert result.best_val_accuracy >= 0.9, result.history


def _tags(run_dir: Path, sub: str) -> dict[str, list[str]]:
    acc = event_accumulator.EventAccumulator(str(run_dir / sub), size_guidance={"tensors": 0, "images": 0})
    acc.Reload()
    return acc.Tags()


def test_tensorboard_holds_every_tag(trained):
    cfg, result = trained
    run_dir = Path(cfg.logdir) / result.run_name
    train = _tags(run_dir, "train")
    val = _tags(run_dir, "validation")
    root = _tags(run_dir, "")
    for tag in (summaries.EPOCH_LOSS, summaries.EPOCH_ACCURACY, summaries.STEP_LOSS, summaries.LEARNING_RATE,
                summaries.ADAM_M, summaries.ADAM_V, summaries.ADAM_M + "_bias", summaries.ADAM_V + "_bias"):
        assert tag in train["tensors"], (tag, train)
    for tag in (summaries.EPOCH_LOSS, summaries.EPOCH_ACCURACY, summaries.CONFUSION, summaries.VAL_MACRO_F1):
        assert tag in val["tensors"], (tag, val)
    assert summaries.BEST_VAL_ACCURACY in root["tensors"]
    assert "_hparams_/session_start_info" in root["tensors"], root
    acc = event_accumulator.EventAccumulator(str(run_dir / "validation"), size_guidance={"tensors": 0})
    acc.Reload()
    epochs = [e.step for e in acc.Tensors(summaries.EPOCH_ACCURACY)]
    assert epochs == [1, 2, 3, 4]
    values = [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(summaries.EPOCH_ACCURACY)]
    assert values == pytest.approx([h["val_accuracy"] for h in result.history])


def test_adam_moment_histograms_are_the_optimizer_slots(trained):
    """The m histogram must change between epochs (it tracks gradients) and v must be non-negative."""
    cfg, result = trained
    acc = event_accumulator.EventAccumulator(str(Path(cfg.logdir) / result.run_name / "train"),
                                             size_guidance={"tensors": 0})
    acc.Reload()
    v_hists = [tf.make_ndarray(e.tensor_proto) for e in acc.Tensors(summaries.ADAM_V)]
    m_hists = [tf.make_ndarray(e.tensor_proto) for e in acc.Tensors(summaries.ADAM_M)]
    assert len(m_hists) == 4
    assert all((h[:, 0] >= 0).all() for h in v_hists)  # bucket left edges of v = squared gradients
    assert not np.allclose(m_hists[0], m_hists[-1])


def test_export_answers_raw_strings_and_matches_training_path(trained, toy_corpus_dir):
    """Serving signature == best checkpoint's training-path logits on the same texts (≤ 1e-5)."""
    from trainer import encoders
    from trainer.checkpoints import best_checkpoint_path
    from trainer.model import build_classifier
    from trainer.preprocessing import Preprocessor

    cfg, result = trained
    loaded = tf.saved_model.load(str(result.export_path))
    serve = loaded.signatures["serving_default"]
    assert set(serve.structured_input_signature[1]) == {"text"}
    texts = [b"the football team scored a goal in the match", b"shares and profit in the market",
             b"", b"\xa315.8m vote in parliament \xff", "caf\u00e9 \u4e2d\u6587 \U0001f600".encode()]
    out = serve(text=tf.constant(texts))
    assert out["probabilities"].dtype == tf.float32 and out["probabilities"].shape == (5, 3)
    assert out["class_id"].dtype == tf.int64 and out["label"].dtype == tf.string
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, atol=1e-5)
    labels = [x.decode() for x in out["label"].numpy()]
    assert labels[:2] == ["sport", "business"]

    spec = encoders.resolve_encoder(cfg.encoder, cache_dir=cfg.cache_dir)
    model = build_classifier(spec.encoder_handle, 3, seq_length=cfg.seq_length, pooling=cfg.pooling)
    tf.train.Checkpoint(model=model).restore(best_checkpoint_path(result.run_checkpoint_dir)).expect_partial()
    pre = Preprocessor(spec.preprocess_handle, seq_length=cfg.seq_length, truncation=cfg.truncation)
    expected = tf.nn.softmax(model(pre(tf.constant(texts)), training=False)).numpy()
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)


def test_export_is_versioned_with_card_warmup_and_serving_ops(trained):
    from trainer.opcheck import check_saved_model_ops

    cfg, result = trained
    assert result.version == 1 and result.export_path == Path(cfg.model_base_path) / "1"
    card = json.loads((result.export_path / "model_card.json").read_text())
    assert card["best_val_accuracy"] == pytest.approx(result.best_val_accuracy)
    assert card["encoder"]["name"] == "tiny-random"
    assert set(card["per_class"]) == {"business", "politics", "sport"}
    assert len(card["epochs"]) == 4 and card["data"]["fingerprint"]
    assert card["environment"]["tensorflow"] == tf.__version__
    assert (result.export_path / "assets.extra" / "tf_serving_warmup_requests").stat().st_size > 0
    ops = check_saved_model_ops(str(result.export_path))
    assert any(op.startswith("WordpieceTokenize") or "Wordpiece" in op for op in ops), sorted(ops)
    leftovers = [p.name for p in Path(cfg.model_base_path).iterdir() if not p.name.isdigit()]
    assert leftovers == []


def test_export_only_uses_the_best_checkpoint_and_publishes_next_version(trained):
    from trainer import run

    cfg, result = trained
    again = run.export_only(TrainConfig(**{**cfg.__dict__, "export_only": True}))
    assert again.version == 2 and again.run_name == result.run_name
    card = json.loads((again.export_path / "model_card.json").read_text())
    best = max(h["val_accuracy"] for h in result.history)
    assert card["best_val_accuracy"] == pytest.approx(best)
    assert card["best_epoch"] == 1 + [h["val_accuracy"] for h in result.history].index(best)


def test_best_checkpoint_saved_only_on_improvement(tmp_path):
    model = tf_keras.Sequential([tf_keras.layers.Dense(2, input_shape=(3,))])
    state = make_state(model, tf_keras.optimizers.Adam())
    ckpts = Checkpoints(tmp_path, state)
    history = []
    saved = [ckpts.end_epoch(acc, history, lambda improved, acc=acc: {"epoch": len(history) + 1, "val_accuracy": acc,
                                                                      "improved": improved})
             for acc in (0.5, 0.7, 0.6, 0.7, 0.8)]
    assert saved == [True, True, False, False, True]
    assert [h["epoch"] for h in ckpts.read_history()] == [1, 2, 3, 4, 5]
    # best/ holds weights and counters only: export needs no optimizer slots (about 2x the weights in Adam)
    best_keys = {k.split("/")[0] for k in tf.train.load_checkpoint(ckpts.best.latest_checkpoint)
                 .get_variable_to_shape_map()}
    assert "optimizer" not in best_keys and "model" in best_keys, best_keys
    assert ckpts.best.latest_checkpoint.endswith("ckpt-5")
    assert ckpts.latest.latest_checkpoint.endswith("ckpt-5")
    assert int(state.best_epoch.numpy()) == 5 and float(state.best_val_accuracy.numpy()) == 0.8


def _tiny_state(seed: int = 0):
    tf_keras.utils.set_random_seed(seed)
    model = tf_keras.Sequential([tf_keras.layers.Dense(2, input_shape=(3,))])
    loss = tf_keras.metrics.Mean("loss")
    return model, loss, make_state(model, tf_keras.optimizers.Adam(), {"train_loss": loss})


def test_step_save_resumes_mid_epoch_and_goes_stale_when_the_epoch_commits(tmp_path):
    model, loss, state = _tiny_state(0)
    ckpts = Checkpoints(tmp_path, state)
    history = []
    ckpts.end_epoch(0.5, history, lambda improved: {"epoch": 1, "val_accuracy": 0.5, "improved": improved})
    model.layers[0].kernel.assign_add(tf.ones([3, 2]))  # "training" in epoch 2
    loss.update_state([2.0, 4.0])
    ckpts.save_step(3, global_step=8)
    trained = model.layers[0].kernel.numpy()

    model2, loss2, state2 = _tiny_state(1)  # a new process: other initial weights, empty metric
    assert Checkpoints(tmp_path, state2).restore_latest()
    assert int(state2.epoch.numpy()) == 1 and int(state2.step_in_epoch.numpy()) == 3
    np.testing.assert_array_equal(model2.layers[0].kernel.numpy(), trained)
    assert float(loss2.result()) == 3.0  # the epoch's running train loss came back too

    ckpts.end_epoch(0.4, history, lambda improved: {"epoch": 2, "val_accuracy": 0.4, "improved": improved})
    assert not ckpts.steps_dir.exists(), "the step save of a committed epoch must be removed"
    _, _, state3 = _tiny_state(2)
    assert Checkpoints(tmp_path, state3).restore_latest()
    assert int(state3.epoch.numpy()) == 2 and int(state3.step_in_epoch.numpy()) == 0


def test_a_stale_step_save_is_never_restored(tmp_path):
    """Killed after latest/ committed epoch 2 but before the step save of epoch 2 was removed."""
    model, _, state = _tiny_state(0)
    ckpts = Checkpoints(tmp_path, state)
    history = []
    ckpts.end_epoch(0.5, history, lambda improved: {"epoch": 1, "val_accuracy": 0.5, "improved": improved})
    ckpts.save_step(2, global_step=7)
    stale = tmp_path / "stale"
    import shutil

    shutil.copytree(ckpts.steps_dir, stale)
    model.layers[0].kernel.assign(tf.zeros([3, 2]))
    ckpts.end_epoch(0.6, history, lambda improved: {"epoch": 2, "val_accuracy": 0.6, "improved": improved})
    shutil.copytree(stale, ckpts.steps_dir)  # as if the removal never happened
    model2, _, state2 = _tiny_state(1)
    assert Checkpoints(tmp_path, state2).restore_latest()
    assert int(state2.epoch.numpy()) == 2 and int(state2.step_in_epoch.numpy()) == 0
    np.testing.assert_array_equal(model2.layers[0].kernel.numpy(), np.zeros([3, 2]))


def test_kill_9_mid_epoch_then_rerun_resumes_at_the_next_epoch(tmp_path, cache_dir, tiny_encoder):
    corpus = write_toy_corpus(tmp_path / "bbc", docs_per_class=16)
    cfg = toy_config(tmp_path, corpus, cache_dir, epochs=3)
    # 48 docs -> 38 train -> 5 steps per epoch: step 7 is in the middle of epoch 2.
    killed = run_trainer(trainer_flags(cfg), env={"BERTBC_TEST_KILL_AT": "step@7"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    run_dir = next(Path(cfg.checkpoint_dir).iterdir())
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1]
    assert not list(Path(cfg.model_base_path).glob("[0-9]*"))

    resumed = run_trainer(trainer_flags(cfg))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming run" in resumed.stderr and "after epoch 1" in resumed.stderr
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[0]["improved"] is True
    assert (Path(cfg.model_base_path) / "1" / "saved_model.pb").exists()
    # A finished run is not resumed: the same command starts a new run instead of overwriting it.
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["finished"] is True and meta["version"] == 1


def test_mirrored_strategy_on_two_logical_cpus(tmp_path, cache_dir, tiny_encoder):
    corpus = write_toy_corpus(tmp_path / "bbc", docs_per_class=8)
    cfg = toy_config(tmp_path, corpus, cache_dir, epochs=1)
    done = run_trainer([*trainer_flags(cfg), "--strategy", "mirrored", "--logical-cpus", "2"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 replica(s)" in done.stderr
    assert (Path(cfg.model_base_path) / "1" / "saved_model.pb").exists()


def test_help_explains_every_flag():
    from trainer.cli import train_parser

    parser = train_parser()
    undocumented = [a.dest for a in parser._actions if a.dest != "help" and not (a.help or "").strip()]
    assert undocumented == []
    text = run_trainer(["--help"]).stdout
    for flag in ("--data-dir", "--encoder", "--epochs", "--batch-size", "--seq-length", "--learning-rate",
                 "--logdir", "--checkpoint-dir", "--model-base-path", "--export-only", "--mixed-precision"):
        assert flag in text


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--seq-length", "1024"], "--seq-length must be in [8, 512]"),
    (["--learning-rate", "-1"], "--learning-rate must be in (0, 1)"),
    (["--pooling", "max"], "invalid choice: 'max'"),
    (["--encoder-handle", "/x"], "--encoder-handle and --preprocess-handle must be given together"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--save-every-minutes", "-1"], "--save-every-minutes must be >= 0"),
])
def test_bad_flags_fail_fast_naming_the_flag(args, message):
    done = run_trainer(args)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_missing_data_dir_is_a_clear_error(tmp_path):
    done = run_trainer(["--data-dir", str(tmp_path / "nope"), "--cache-dir", str(tmp_path)])
    assert done.returncode == 2 and "does not exist" in done.stderr, done.stderr[-2000:]


def test_logged_learning_rate_is_the_rate_of_the_step_taken(trained):
    """Step s applied the rate of 0-based update index s-1 (with warm-up, the first update's rate is 0)."""
    from trainer.schedule import make_schedule

    cfg, result = trained
    meta = json.loads((result.run_checkpoint_dir / "run.json").read_text())
    schedule = make_schedule(cfg.learning_rate, cfg.warmup_fraction, train_docs=meta["settings"]["schedule"][
        "steps_per_epoch"] * cfg.batch_size, batch_size=cfg.batch_size, epochs=cfg.epochs)
    assert meta["settings"]["schedule"]["total_steps"] == schedule.total_steps > 0
    assert meta["settings"]["schedule"]["warmup_steps"] == schedule.warmup_steps > 0
    acc = event_accumulator.EventAccumulator(str(Path(cfg.logdir) / result.run_name / "train"),
                                             size_guidance={"tensors": 0})
    acc.Reload()
    logged = {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(summaries.LEARNING_RATE)}
    assert logged and min(logged) == cfg.steps_per_summary
    for step, rate in logged.items():
        assert rate == pytest.approx(schedule.rate_at(step - 1), rel=1e-6, abs=1e-12), step
    peak_step = schedule.warmup_steps + 1
    if peak_step in logged:
        assert logged[peak_step] == pytest.approx(cfg.learning_rate)


@pytest.mark.parametrize("epoch, steps_done, validation, expected", [
    (1, 0, None, 10 * 2.0 * 2 + 2 * (0.25 * 10 * 2.0) + 60),  # validation guessed as a quarter of an epoch
    (1, 10, 5.0, 10 * 2.0 + 2 * 5.0 + 60),                    # epoch 1 trained: its validation and epoch 2 left
    (2, 10, 5.0, 5.0 + 60),                                   # only the last validation and the export
])
def test_run_time_left_counts_steps_validations_and_export(epoch, steps_done, validation, expected):
    from trainer.eta import RunClock

    clock = RunClock(steps_per_epoch=10, epochs=2)
    assert clock.remaining(epoch=1, steps_done=0) is None  # nothing measured yet
    for seconds in (30.0, 2.0, 2.0):  # the first (tracing) step is left out
        clock.record_step(seconds)
    if validation is not None:
        clock.record_validation(validation)
    assert clock.remaining(epoch=epoch, steps_done=steps_done) == pytest.approx(expected)


@pytest.mark.parametrize("seconds, text", [(None, "?"), (7, "7s"), (95, "1m35s"), (3725, "1h02m")])
def test_format_duration(seconds, text):
    from trainer.eta import format_duration

    assert format_duration(seconds) == text
