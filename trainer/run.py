"""The trainer's main job: corpus → tf.data → fine-tuning → best checkpoint → versioned SavedModel.

A run lives in `<checkpoint_dir>/<run>/` (checkpoints, history, run.json) and `<logdir>/<run>/` (TensorBoard).
Starting the trainer again resumes the newest unfinished run with the same settings (after a crash or kill),
or starts a new run; a finished run is never overwritten.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import tf_keras

from trainer import data as data_lib
from trainer import encoders, summaries
from trainer.checkpoints import Checkpoints, best_checkpoint_path, make_state, write_json_atomic
from trainer.config import TrainConfig
from trainer.export import ServingModule, export_saved_model
from trainer.loop import build_training, configure_precision, make_learning_rate, make_strategy, run_epochs
from trainer.model import build_classifier
from trainer.pipeline import make_eval_dataset, make_train_dataset
from trainer.preprocessing import Preprocessor

log = logging.getLogger("bertbc.trainer")

# Settings that must match for a rerun to resume a run (epochs may grow; everything else changes the model).
RESUME_KEYS = ("encoder", "encoder_handle", "preprocess_handle", "pooling", "truncation", "batch_size",
               "seq_length", "learning_rate", "warmup_fraction", "dropout", "seed", "split_seed", "validation_split",
               "mixed_precision", "max_train_docs", "max_val_docs")


class RunError(RuntimeError):
    """A run cannot start or export as asked; the message says what to do instead."""


@dataclasses.dataclass(frozen=True)
class RunResult:
    run_name: str
    run_checkpoint_dir: Path
    version: int | None
    export_path: Path | None
    best_val_accuracy: float
    history: list[dict]


def set_seeds(seed: int) -> None:
    """Python, NumPy and TF seeds in one place (recorded in run.json and the model card)."""
    random.seed(seed)
    np.random.seed(seed)
    tf_keras.utils.set_random_seed(seed)


def _resume_settings(cfg: TrainConfig, fingerprint: str) -> dict:
    settings = {k: getattr(cfg, k) for k in RESUME_KEYS}
    settings["data_fingerprint"] = fingerprint
    return settings


def choose_run(cfg: TrainConfig, fingerprint: str) -> tuple[str, bool]:
    """Picks the run folder: the named one, else the newest unfinished run with these settings, else a new one.

    Returns:
      (run name, whether it resumes an existing run).
    """
    root = Path(cfg.checkpoint_dir)
    wanted = _resume_settings(cfg, fingerprint)
    candidates = [root / cfg.run_name] if cfg.run_name else sorted(
        (p for p in root.glob("*/run.json")), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        run_json = path if path.name == "run.json" else path / "run.json"
        if not run_json.exists():
            continue
        meta = json.loads(run_json.read_text())
        if meta.get("finished"):
            if cfg.run_name:
                raise RunError(f"run {cfg.run_name!r} in {root} already finished (exported version "
                               f"{meta.get('version')}); use --export-only to re-export it or a new --run-name")
            continue
        if meta.get("settings") != wanted:
            if cfg.run_name:
                diff = {k: (meta.get("settings", {}).get(k), v) for k, v in wanted.items()
                        if meta.get("settings", {}).get(k) != v}
                raise RunError(f"run {cfg.run_name!r} was started with other settings {diff} (old, new); "
                               "pass the same flags to resume it or a new --run-name")
            continue
        return run_json.parent.name, True
    name = cfg.run_name or datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + f"-{cfg.encoder}"
    return name, False


def train_and_export(cfg: TrainConfig, corpus: data_lib.Corpus | None = None) -> RunResult:
    """Runs (or resumes) training, then exports the best checkpoint as a new version."""
    started = time.perf_counter()
    cfg.validate()
    configure_precision(cfg.mixed_precision)
    strategy = make_strategy(cfg.strategy, cfg.logical_cpus)
    corpus = corpus or load_data(cfg)
    spec = encoders.resolve_encoder(cfg.encoder, encoder_handle=cfg.encoder_handle,
                                    preprocess_handle=cfg.preprocess_handle, cache_dir=cfg.cache_dir)
    run_name, resumed = choose_run(cfg, corpus.fingerprint)
    run_ckpt = Path(cfg.checkpoint_dir) / run_name
    run_json = run_ckpt / "run.json"
    if not resumed:
        write_json_atomic(run_json, {"run_name": run_name, "settings": _resume_settings(cfg, corpus.fingerprint),
                                     "config": dataclasses.asdict(cfg), "finished": False})
    set_seeds(cfg.seed)
    preprocessor = Preprocessor(spec.preprocess_handle, seq_length=cfg.seq_length, truncation=cfg.truncation)
    steps_per_epoch = math.ceil(len(corpus.train_texts) / cfg.batch_size)
    learning_rate = make_learning_rate(cfg.learning_rate, cfg.warmup_fraction, steps_per_epoch * cfg.epochs)
    num_classes = len(corpus.class_names)
    model, optimizer, state, steps = build_training(
        strategy, lambda: build_classifier(spec.encoder_handle, num_classes, seq_length=cfg.seq_length,
                                           pooling=cfg.pooling, dropout=cfg.dropout),
        learning_rate=learning_rate, mixed_precision=cfg.mixed_precision)
    checkpoints = Checkpoints(run_ckpt, state)
    if checkpoints.restore_latest():
        log.info("resuming run %s after epoch %d (best val accuracy %.4f at epoch %d)", run_name,
                 int(state.epoch.numpy()), float(state.best_val_accuracy.numpy()), int(state.best_epoch.numpy()))
    else:
        log.info("starting run %s: %d train / %d val docs, %d steps per epoch, %d replica(s)", run_name,
                 len(corpus.train_texts), len(corpus.val_texts), steps_per_epoch, strategy.num_replicas_in_sync)
    logger = summaries.RunLogger(Path(cfg.logdir) / run_name)
    val_ds = make_eval_dataset(corpus.val_texts, corpus.val_labels, preprocessor, batch_size=cfg.batch_size)
    run_epochs(
        strategy=strategy, steps=steps, model=model, optimizer=optimizer, checkpoints=checkpoints,
        make_train_ds=lambda epoch: make_train_dataset(corpus.train_texts, corpus.train_labels, preprocessor,
                                                       batch_size=cfg.batch_size, seed=cfg.seed + epoch),
        val_ds=val_ds, epochs=cfg.epochs, num_classes=num_classes, class_names=list(corpus.class_names),
        logger=logger, learning_rate=learning_rate, steps_per_summary=cfg.steps_per_summary,
        steps_per_epoch=steps_per_epoch)
    best = float(state.best_val_accuracy.numpy())
    logger.hparams(cfg.hparams(), run_name, best, int(state.epoch.numpy()))
    logger.close()
    return export_run(cfg, corpus, spec, run_name, preprocessor=preprocessor,
                      train_seconds=time.perf_counter() - started)


def export_run(cfg: TrainConfig, corpus: data_lib.Corpus, spec, run_name: str, *, preprocessor=None,
               train_seconds: float | None = None) -> RunResult:
    """Restores the run's BEST checkpoint into a fresh model and publishes it as the next version."""
    from trainer.modelcard import build_model_card  # noqa: PLC0415 (keeps `python -m trainer --help` fast)
    from trainer.warmup import write_warmup_requests  # noqa: PLC0415

    started = time.perf_counter()
    run_ckpt = Path(cfg.checkpoint_dir) / run_name
    ckpt_path = best_checkpoint_path(run_ckpt)
    preprocessor = preprocessor or Preprocessor(spec.preprocess_handle, seq_length=cfg.seq_length,
                                                truncation=cfg.truncation)
    model = build_classifier(spec.encoder_handle, len(corpus.class_names), seq_length=cfg.seq_length,
                             pooling=cfg.pooling, dropout=cfg.dropout)
    state = make_state(model, tf_keras.optimizers.Adam())
    state.checkpoint.restore(ckpt_path).expect_partial()
    log.info("restored best checkpoint %s (epoch %d, val accuracy %.4f)", ckpt_path, int(state.best_epoch.numpy()),
             float(state.best_val_accuracy.numpy()))
    module = ServingModule(preprocessor, model, list(corpus.class_names))
    history = Checkpoints(run_ckpt, state).read_history()
    card = build_model_card(cfg, corpus, spec, module, history=history, run_name=run_name,
                            best_epoch=int(state.best_epoch.numpy()),
                            best_val_accuracy=float(state.best_val_accuracy.numpy()),
                            train_seconds=train_seconds)

    def write_extras(tmp_dir: Path) -> None:
        from trainer.opcheck import check_saved_model_ops  # noqa: PLC0415

        # One single-text and one batched request per text: the shapes clients send first after a swap.
        write_warmup_requests(str(tmp_dir), list(corpus.val_texts[:4]) or [b"warm-up"], model_name=cfg.model_name)
        check_saved_model_ops(str(tmp_dir))
        card["export_seconds"] = round(time.perf_counter() - started, 1)
        (tmp_dir / "model_card.json").write_text(json.dumps(card, indent=2, sort_keys=True))

    version, path = export_saved_model(module, Path(cfg.model_base_path), write_extras=write_extras)
    run_json = run_ckpt / "run.json"
    meta = json.loads(run_json.read_text()) if run_json.exists() else {"run_name": run_name}
    meta.update(finished=True, version=version, export_path=str(path))
    write_json_atomic(run_json, meta)
    log.info("model card: %s", path / "model_card.json")
    return RunResult(run_name, run_ckpt, version, path, float(state.best_val_accuracy.numpy()), history)


def run_to_export(cfg: TrainConfig) -> str:
    """For --export-only: the named run, else the newest run with a best checkpoint."""
    root = Path(cfg.checkpoint_dir)
    if cfg.run_name:
        return cfg.run_name
    runs = sorted((p.parent.parent for p in root.glob("*/best/checkpoint")), key=lambda p: p.stat().st_mtime,
                  reverse=True)
    if not runs:
        raise RunError(f"--export-only: no run with a best checkpoint under {root}; train first")
    return runs[0].name


def export_only(cfg: TrainConfig) -> RunResult:
    cfg.validate()
    corpus = load_data(cfg)
    spec = encoders.resolve_encoder(cfg.encoder, encoder_handle=cfg.encoder_handle,
                                    preprocess_handle=cfg.preprocess_handle, cache_dir=cfg.cache_dir)
    return export_run(cfg, corpus, spec, run_to_export(cfg))


def load_data(cfg: TrainConfig) -> data_lib.Corpus:
    data_dir = data_lib.resolve_data_dir(cfg.data_dir, cfg.cache_dir)
    return data_lib.load_corpus(data_dir, validation_split=cfg.validation_split, seed=cfg.split_seed,
                                max_train_docs=cfg.max_train_docs, max_val_docs=cfg.max_val_docs)


