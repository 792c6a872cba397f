"""Run folders: resume only with the run's own settings, and --export-only with the settings a run was trained
with, never today's command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import run_trainer, toy_config, trainer_flags, write_toy_corpus


def test_resume_with_other_settings_is_refused_naming_them(tmp_path, cache_dir, tiny_encoder):
    corpus = write_toy_corpus(tmp_path / "bbc", docs_per_class=8)
    cfg = toy_config(tmp_path, corpus, cache_dir, epochs=3)
    flags = trainer_flags(cfg)
    killed = run_trainer(flags, env={"BERTBC_TEST_KILL_AT": "step@1"})
    assert killed.returncode == -9
    run_dir = next(Path(cfg.checkpoint_dir).iterdir())
    schedule = json.loads((run_dir / "run.json").read_text())["settings"]["schedule"]
    assert schedule["total_steps"] == 3 * schedule["steps_per_epoch"]

    other = [*flags[:flags.index("--epochs")], "--epochs", "4", *flags[flags.index("--epochs") + 2:]]
    refused = run_trainer(other)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "--epochs 3 (run) vs 4 (now)" in refused.stderr and "--new-run" in refused.stderr
    assert list(Path(cfg.checkpoint_dir).iterdir()) == [run_dir]  # nothing started

    fresh = run_trainer([*other, "--new-run", "--epochs", "1"])
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert len(list(Path(cfg.checkpoint_dir).iterdir())) == 2
    assert not json.loads((run_dir / "run.json").read_text())["finished"]  # the old run is left as it was


def _copy_run(trained_cfg, tmp: Path) -> tuple[Path, Path]:
    ckpt = tmp / "ckpt"
    shutil.copytree(trained_cfg.checkpoint_dir, ckpt)
    return ckpt, tmp / "models" / "bertbc"


def test_export_only_uses_the_runs_settings_not_todays_defaults(trained, tmp_path):
    cfg, result = trained  # tiny-random, 48 tokens: far from the CLI defaults (minilm-l6, 256)
    ckpt, models = _copy_run(cfg, tmp_path)
    done = run_trainer(["--export-only", "--checkpoint-dir", str(ckpt), "--model-base-path", str(models),
                        "--cache-dir", cfg.cache_dir])
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"exporting run {result.run_name}: the newest finished run" in done.stderr
    card = json.loads((models / "1" / "model_card.json").read_text())
    assert card["config"]["seq_length"] == cfg.seq_length and card["encoder"]["name"] == "tiny-random"
    assert card["source"] == "export-only" and card["run_name"] == result.run_name
    meta = json.loads((ckpt / result.run_name / "run.json").read_text())
    assert meta["re_exports"][-1] == 1 and meta["version"] == result.version  # earlier tests may re-export too


def test_export_only_refuses_flags_that_contradict_the_run(trained, tmp_path):
    cfg, result = trained
    ckpt, models = _copy_run(cfg, tmp_path)
    done = run_trainer(["--export-only", "--checkpoint-dir", str(ckpt), "--model-base-path", str(models),
                        "--cache-dir", cfg.cache_dir, "--seq-length", "128", "--pooling", "cls"])
    assert done.returncode == 2
    assert "--seq-length 128 (run: 48)" in done.stderr and "--pooling 'cls' (run: 'mean')" in done.stderr
    assert not models.exists() or not any(models.iterdir())  # the preflight may create it, nothing is published

    unknown = run_trainer(["--export-only", "--checkpoint-dir", str(ckpt), "--model-base-path", str(models),
                           "--cache-dir", cfg.cache_dir, "--run", "no-such-run"])
    assert unknown.returncode == 2 and "no run 'no-such-run'" in unknown.stderr and result.run_name in unknown.stderr


def test_export_only_refuses_other_data(trained, tmp_path):
    cfg, _ = trained
    ckpt, models = _copy_run(cfg, tmp_path)
    other = write_toy_corpus(tmp_path / "other", docs_per_class=12, seed=7)
    done = run_trainer(["--export-only", "--checkpoint-dir", str(ckpt), "--model-base-path", str(models),
                        "--cache-dir", cfg.cache_dir, "--data-dir", str(other)])
    assert done.returncode == 2 and "is not the data run" in done.stderr, done.stderr[-2000:]


def test_runs_recorded_before_val_windows_read_as_head_validated(trained, tmp_path):
    """run.json files written before --val-windows existed hold no such key; those runs were validated on the
    head, so resume and --export-only must read 1 (the head), not today's default of 4."""
    from trainer import run
    from trainer.config import TrainConfig

    cfg, result = trained
    ckpt, models = _copy_run(cfg, tmp_path)
    path = ckpt / result.run_name / "run.json"
    meta = json.loads(path.read_text())
    assert meta["settings"]["val_windows"] == TrainConfig.val_windows == 4  # recorded by today's trainer
    for part in ("settings", "config"):
        del meta[part]["val_windows"]
    path.write_text(json.dumps(meta))
    name, read = run.run_to_export(TrainConfig(checkpoint_dir=str(ckpt)))
    assert name == result.run_name
    assert read["settings"]["val_windows"] == 1 and read["config"]["val_windows"] == 1
    done = run_trainer(["--export-only", "--checkpoint-dir", str(ckpt), "--model-base-path", str(models),
                        "--cache-dir", cfg.cache_dir])
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((models / "1" / "model_card.json").read_text())["config"]["val_windows"] == 1


def test_validation_window_overlap_is_part_of_a_runs_settings():
    """Validation over windows uses --window-overlap, so a resume with another overlap would pick checkpoints by
    another rule: it is a recorded setting when validation reads windows, and named when it differs."""
    from trainer import run
    from trainer.config import TrainConfig
    from trainer.schedule import make_schedule

    schedule = make_schedule(5e-5, 0.1, train_docs=100, batch_size=16, epochs=4)
    default = run.run_settings(TrainConfig(), "fp", schedule)
    assert default["val_window_overlap"] == 64  # a quarter of 256
    other = run.run_settings(TrainConfig(window_overlap=32), "fp", schedule)
    assert run.describe_differences(default, other) == "--window-overlap (for validation) 64 (run) vs 32 (now)"
    head = run.run_settings(TrainConfig(val_windows=1, window_overlap=32), "fp", schedule)
    assert head["val_window_overlap"] is None  # head-only validation does not depend on it


def test_new_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    """Run names have a one-second resolution; two --new-run starts in that second must not share a folder."""
    from trainer import run
    from trainer.config import TrainConfig

    cfg = TrainConfig(checkpoint_dir=str(tmp_path / "ckpt"), resume=False, encoder="tiny-random")
    names = [run.choose_run(cfg, {})[0] for _ in range(3)]
    assert len(set(names)) == 3, names
    assert all((tmp_path / "ckpt" / name).is_dir() for name in names)


def test_mixed_precision_run_exports_what_export_only_exports(tmp_path, cache_dir, tiny_encoder):
    """--mixed-precision sets a process-wide Keras policy and graph rewrite; the export after training must not
    inherit them: its version equals an --export-only of the same run (fresh process, float32). On this AVX2-only
    CPU the bf16 rewrite is skipped (the log says so) and the policy alone makes the pooling bf16."""
    import numpy as np
    import tensorflow as tf

    corpus = write_toy_corpus(tmp_path / "bbc", docs_per_class=6)
    cfg = toy_config(tmp_path, corpus, cache_dir, epochs=1)
    quick = ["--val-windows", "1", "--serve-windows", "2", "--load-check", "off"]
    trained = run_trainer([*trainer_flags(cfg), "--mixed-precision", "bf16", *quick])
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "--mixed-precision bf16: this CPU" in trained.stderr
    again = run_trainer(["--export-only", "--checkpoint-dir", cfg.checkpoint_dir, "--model-base-path",
                         cfg.model_base_path, "--cache-dir", cfg.cache_dir, "--serve-windows", "2", "--gate", "off",
                         "--load-check", "off"])
    assert again.returncode == 0, again.stderr[-3000:]
    texts = tf.constant(["Shares rose.", "the minister said the vote " * 20, ""])
    outputs = [tf.saved_model.load(str(Path(cfg.model_base_path) / v)).signatures["serving_default"](text=texts)
               for v in ("1", "2")]
    np.testing.assert_allclose(outputs[0]["probabilities"].numpy(), outputs[1]["probabilities"].numpy(),
                               rtol=0, atol=1e-6)
    cards = [json.loads((Path(cfg.model_base_path) / v / "model_card.json").read_text()) for v in ("1", "2")]
    assert cards[0]["export_val_accuracy"] == cards[1]["export_val_accuracy"]
    assert cards[0]["export_check"]["trained_val_accuracy"] == cards[0]["best_val_accuracy"]
