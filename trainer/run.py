"""The trainer's main job: corpus → tf.data → fine-tuning → best checkpoint → versioned SavedModel.

A run lives in `<checkpoint_dir>/<run>/` (checkpoints, history, run.json) and `<logdir>/<run>/` (TensorBoard).
run.json records the run's settings and its learning-rate schedule when it starts. Rules:

* Starting the trainer again resumes the newest run if it is unfinished and was started with the same settings
  (after a crash or kill); if the newest run is unfinished but the settings differ, the trainer refuses and
  names them (rerun with the run's flags, or pass --new-run). Otherwise a new run starts. A finished run is never
  overwritten.
* A run is finished once its version is published; a run killed after publishing but before run.json said so is
  completed without publishing twice (the version's model card names its run).
* `--export-only` re-exports a finished run (the newest one, or `--run NAME`) with the settings it was TRAINED
  with, read from run.json; a flag that contradicts them is refused.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras

from trainer import data as data_lib
from trainer import distributed, encoders, sharding, summaries, weights
from trainer.checkpoints import Checkpoints, best_checkpoint_path, make_state, write_json_atomic
from trainer.config import MODEL_KEYS, TrainConfig
from trainer.export import (
    ServingModule,
    clean_stale_exports,
    export_saved_model,
    parse_version,
)
from trainer.export_check import ExportCheckError, check_export, check_validation_accuracy
from trainer.loop import build_training, run_epochs
from trainer.model import build_classifier
from trainer.multilabel import NEUTRAL_THRESHOLD, multi_hot, tune_thresholds
from trainer.pipeline import eval_cache_fits, make_eval_dataset, make_stream_train_dataset, make_train_dataset
from trainer.precision import configure_precision, float32_context
from trainer.preflight import enable_gpu_memory_growth
from trainer.preprocessing import Preprocessor, length_summary
from trainer.schedule import Schedule, make_schedule

log = logging.getLogger("bertbc.trainer")

# What a card says about where its version came from (a finished training run vs a later --export-only).
SOURCE_TRAIN, SOURCE_EXPORT_ONLY = "train", "export-only"


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
    test_report: dict | None = None  # the held-out test set scored once through the exported graph


def set_seeds(seed: int) -> None:
    """Python, NumPy and TF seeds in one place (recorded in run.json and the model card)."""
    random.seed(seed)
    np.random.seed(seed)
    tf_keras.utils.set_random_seed(seed)


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def run_settings(cfg: TrainConfig, fingerprint: str, schedule: Schedule) -> dict:
    """What must be equal for a rerun to continue a run: the model settings, the data and the schedule."""
    settings = {k: getattr(cfg, k) for k in MODEL_KEYS}
    # --window-overlap is export-time for serving, but validation over windows uses it too: it picks the checkpoint.
    settings["val_window_overlap"] = cfg.overlap_tokens if cfg.val_windows > 1 else None
    settings["data_fingerprint"] = fingerprint
    if cfg.class_weights != "none":  # only when set, so runs from before the flag still resume
        settings["class_weights"] = cfg.class_weights
    if cfg.multi_label:  # likewise
        settings["multi_label"] = True
    if cfg.shuffle_buffer != TrainConfig.shuffle_buffer:  # likewise; it orders the rows of a large corpus
        settings["shuffle_buffer"] = cfg.shuffle_buffer
    settings["schedule"] = dataclasses.asdict(schedule)
    return settings


def describe_differences(old: dict, new: dict) -> str:
    """`--epochs 4 (run) vs 3 (now), ...` for the settings that differ."""
    parts = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        if key == "schedule":
            continue  # follows from epochs/batch size/warm-up/data, which are named themselves
        name = {"data_fingerprint": "the data (fingerprint)",
                "val_window_overlap": "--window-overlap (for validation)"}.get(key, _flag(key))
        parts.append(f"{name} {old.get(key)!r} (run) vs {new.get(key)!r} (now)")
    if not parts and old.get("schedule") != new.get("schedule"):
        parts.append(f"the learning-rate schedule {old.get('schedule')} (run) vs {new.get('schedule')} (now)")
    return ", ".join(parts)


# Settings added after runs were recorded, with the value such older runs were trained with.
_BEFORE_RECORDED = {"val_windows": 1, "val_window_overlap": None}


def _with_legacy_settings(meta: dict) -> dict:
    if "settings" in meta:
        meta["settings"] = {**_BEFORE_RECORDED, **meta["settings"]}
    if "config" in meta:
        meta["config"] = {"val_windows": _BEFORE_RECORDED["val_windows"], **meta["config"]}
    return meta


def _read_run(run_dir: Path) -> dict | None:
    path = run_dir / "run.json"
    return _with_legacy_settings(json.loads(path.read_text())) if path.exists() else None


def _runs(root: Path) -> list[tuple[Path, dict]]:
    """(folder, run.json) of every run under `root`, newest started first."""
    runs = [(p.parent, _with_legacy_settings(json.loads(p.read_text()))) for p in root.glob("*/run.json")]
    return sorted(runs, key=lambda r: (r[1].get("started", ""), r[0].stat().st_mtime), reverse=True)


def choose_run(cfg: TrainConfig, settings: dict) -> tuple[str, bool]:
    """Picks the run folder (see the module docstring). Returns (run name, whether it resumes)."""
    root = Path(cfg.checkpoint_dir)
    if cfg.run_name:
        meta = _read_run(root / cfg.run_name)
        if meta is None:
            return cfg.run_name, False
        if meta.get("finished"):
            raise RunError(f"run {cfg.run_name!r} in {root} already finished (exported version "
                           f"{meta.get('version')}); use --export-only --run {cfg.run_name} to re-export it, "
                           "or a new --run-name")
        diff = describe_differences(meta.get("settings", {}), settings)
        if diff:
            raise RunError(f"run {cfg.run_name!r} was started with other settings: {diff}; pass the run's flags "
                           "to resume it, or a new --run-name")
        return cfg.run_name, True
    runs = [] if not cfg.resume else _runs(root)
    if runs and not runs[0][1].get("finished"):
        newest, meta = runs[0]
        diff = describe_differences(meta.get("settings", {}), settings)
        if diff:
            raise RunError(f"the newest run {newest.name!r} in {root} is unfinished and was started with other "
                           f"settings: {diff}. Rerun with the run's flags to resume it, or pass --new-run to "
                           "leave it and start a new run")
        return newest.name, True
    return new_run_folder(root, datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + f"-{cfg.encoder}"), False


def new_run_folder(root: Path, stem: str) -> str:
    """Creates and returns a run folder name that no other start has taken: `stem`, else `stem-2`, `stem-3`, ...

    The folder is made with an exclusive mkdir, so two `--new-run` starts in the same second (the name has
    seconds resolution) get two folders instead of writing into one.
    """
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        name = stem if n == 1 else f"{stem}-{n}"
        try:
            (root / name).mkdir()
        except FileExistsError:
            continue
        return name
    raise RunError(f"could not create a new run folder {stem}-N under {root}: 999 exist")


def _choose_run_everywhere(cfg: TrainConfig, settings: dict, strategy, cluster) -> tuple[str, bool]:
    """The chief decides; other workers receive its decision (or its refusal) through one all-reduce.

    First every worker checks that all run the same settings on the same data (an all-reduce of their hashes):
    a worker with another --seed, --max-*-docs or corpus would silently train on an inconsistent shard.
    """
    if cfg.run_name and len(cfg.run_name.encode()) > 200:  # refused everywhere, before any collective
        raise RunError(f"--run-name is {len(cfg.run_name.encode())} bytes long; at most 200 are allowed")
    if cluster.multi_worker:
        agreed = {**settings, "run_name": cfg.run_name, "resume": cfg.resume, "deterministic": cfg.deterministic}
        differing = distributed.disagreeing_settings(strategy, agreed)
        if differing:
            names = {"data_fingerprint": "the data (fingerprint)", "schedule": "the learning-rate schedule",
                     "val_window_overlap": "--window-overlap (for validation)"}
            named = [names.get(k, _flag(k)) for k in differing]
            mine = ", ".join(f"{name} = {str(agreed[k])[:60]}" for name, k in zip(named, differing, strict=True))
            raise RunError(f"{cluster.name}: the workers disagree on {', '.join(named)} (this worker: {mine}); "
                           "every worker must run the same command on the same data")
    decision = None
    if cluster.is_chief:
        try:
            name, resumed = choose_run(cfg, settings)
        except Exception as e:
            if cluster.multi_worker:  # the others are waiting in the broadcast: tell them why, then fail too
                distributed.broadcast_string(strategy, distributed.outcome_text(e))
            raise
        decision = f"{int(resumed)}{name}"
    if cluster.multi_worker:
        decision = distributed.broadcast_string(strategy, decision)
        if decision.startswith("!"):
            raise RunError(f"the chief refused to start: {decision[1:]}")
    return decision[1:], decision[0] == "1"


def train_and_export(cfg: TrainConfig, corpus: data_lib.Corpus | None = None) -> RunResult:
    """Runs (or resumes) training, then exports the best checkpoint as a new version (on the chief)."""
    started = time.perf_counter()
    cfg.validate()
    enable_gpu_memory_growth()  # before anything initialises the GPUs (the strategy lists them)
    cluster = distributed.cluster_from_env()
    precision = configure_precision(cfg.mixed_precision)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
        log.info("op determinism enabled (--deterministic)")
    strategy = distributed.make_strategy(cfg.strategy, cfg.logical_cpus, cluster)  # before any other TF op
    folders = distributed.WorkerFolders(cluster)
    corpus = corpus or load_data(cfg, stream_train=True)
    spec = encoders.resolve_encoder(cfg.encoder, encoder_handle=cfg.encoder_handle,
                                    preprocess_handle=cfg.preprocess_handle, cache_dir=cfg.cache_dir)
    _check_export_precision(cfg, spec)
    try:
        shards = sharding.plan_input_sharding(
            cfg.input_sharding, file_rows=getattr(corpus.train_stream, "file_rows", ()),
            num_workers=cluster.num_workers, replicas=strategy.num_replicas_in_sync, batch_size=cfg.batch_size)
    except sharding.ShardingError as e:
        raise RunError(str(e)) from None
    schedule = make_schedule(cfg.learning_rate, cfg.warmup_fraction, train_docs=corpus.num_train,
                             batch_size=cfg.batch_size, epochs=cfg.epochs,
                             steps_per_epoch=shards.steps_per_epoch if shards else None)
    if cluster.is_chief:
        clean_stale_exports(Path(cfg.model_base_path))
    settings = run_settings(cfg, corpus.fingerprint, schedule)
    if shards is not None:  # only then, so other runs still resume: it decides which worker trains which rows
        settings["input_sharding"] = f"file: {cluster.num_workers} workers"
    run_name, resumed = _choose_run_everywhere(cfg, settings, strategy, cluster)
    run_ckpt = Path(cfg.checkpoint_dir) / run_name
    if cluster.is_chief and not resumed:
        write_json_atomic(run_ckpt / "run.json", {
            "run_name": run_name, "settings": settings, "config": dataclasses.asdict(cfg), "finished": False,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "workers": cluster.num_workers})
    set_seeds(cfg.seed)
    preprocessor = Preprocessor(spec.preprocess_handle, seq_length=cfg.seq_length, truncation=cfg.truncation)
    if cluster.is_chief and not resumed:
        _log_lengths(spec, corpus, cfg)
    num_classes = len(corpus.class_names)
    model, optimizer, state, steps = build_training(
        strategy, lambda: build_classifier(spec.encoder_handle, num_classes, seq_length=cfg.seq_length,
                                           pooling=cfg.pooling, dropout=cfg.dropout),
        learning_rate=schedule.learning_rate(), loss_scaling=precision.loss_scaling, seed=cfg.seed,
        class_weights=weights.for_config(cfg, corpus), multi_label=corpus.multi_label)
    checkpoints = Checkpoints(run_ckpt, state, folders if cluster.multi_worker else None)
    if checkpoints.restore_latest():
        log.info("resuming run %s after epoch %d (best val %s %.4f at epoch %d)", run_name,
                 int(state.epoch.numpy()), "micro-F1" if corpus.multi_label else "accuracy",
                 float(state.best_val_accuracy.numpy()), int(state.best_epoch.numpy()))
    else:
        log.info("starting run %s: %d train / %d val docs (validated in up to %d window(s) each), %d steps per "
                 "epoch, %d replica(s)", run_name, corpus.num_train, len(corpus.val_texts), cfg.val_windows,
                 schedule.steps_per_epoch, strategy.num_replicas_in_sync)
    logger = summaries.RunLogger(Path(cfg.logdir) / run_name, enabled=cluster.is_chief)
    val_ds = make_eval_dataset(
        corpus.val_texts,
        lambda t: preprocessor.windowed(t, max_windows=cfg.val_windows, overlap=cfg.overlap_tokens, bucket=False),
        batch_size=cfg.batch_size, cache=eval_cache_fits(len(corpus.val_texts), cfg.val_windows, cfg.seq_length))
    run_epochs(
        strategy=strategy, steps=steps, model=model, optimizer=optimizer, checkpoints=checkpoints,
        make_train_ds=_train_datasets(cfg, corpus, preprocessor, strategy, shards,
                                      distributed.input_slice(cluster, strategy, cfg.batch_size)),
        val_ds=val_ds, val_labels=corpus.val_labels, epochs=cfg.epochs, num_classes=num_classes,
        class_names=list(corpus.class_names),
        logger=logger, schedule=schedule, steps_per_summary=cfg.steps_per_summary,
        show_progress=cluster.is_chief, save_every_seconds=60 * cfg.save_every_minutes,
        multi_label=corpus.multi_label)
    best = float(state.best_val_accuracy.numpy())
    logger.hparams(cfg.hparams(), run_name, best, int(state.epoch.numpy()))
    logger.close()
    folders.close()
    if not cluster.is_chief:
        # Wait for the chief's export (a collective): a worker that exits first makes the chief's coordination
        # service report "tasks have crashed" although nothing did.
        log.info("%s finished training run %s; waiting for the chief to export it", cluster.name, run_name)
        outcome = distributed.broadcast_string(strategy, None)
        if outcome.startswith("!"):  # the chief failed after training and said why (see below)
            raise RunError(f"the chief failed after training run {run_name}: {outcome[1:]}")
        log.info("the chief exported run %s as version %s", run_name, outcome)
        return RunResult(run_name, run_ckpt, None, None, best, [])
    try:
        published = published_version(Path(cfg.model_base_path), run_name)
        if published is not None:
            log.info("run %s was already published as version %d (interrupted before run.json said so)",
                     run_name, published)
            _mark_finished(run_ckpt, published, Path(cfg.model_base_path) / str(published))
            result = RunResult(run_name, run_ckpt, published, Path(cfg.model_base_path) / str(published), best,
                               checkpoints.read_history())
        else:
            result = export_run(cfg, corpus, spec, run_name, preprocessor=preprocessor,
                                train_seconds=time.perf_counter() - started, source=SOURCE_TRAIN)
    except Exception as e:
        # The workers wait in the broadcast below: always send them an outcome, or they block forever.
        if cluster.multi_worker:
            distributed.broadcast_string(strategy, distributed.outcome_text(e))
        raise
    if cluster.multi_worker:
        distributed.broadcast_string(strategy, str(result.version))
    return result


def _train_datasets(cfg: TrainConfig, corpus: data_lib.Corpus, preprocessor, strategy,
                    shards: sharding.FileShards | None, worker_slice):
    """`make_train_ds(epoch, skip_steps)` for the loop, a distributed dataset: from memory, from the files for a
    streamed corpus, or from this worker's files only (FILE sharding)."""
    def stream_dataset(stream, rows, batch_size, epoch, skip, worker_slice):
        return make_stream_train_dataset(
            stream, preprocessor, rows=rows, num_classes=len(corpus.class_names), multi_label=corpus.multi_label,
            batch_size=batch_size, seed=cfg.seed + epoch, shuffle_buffer=cfg.shuffle_buffer, skip_batches=skip,
            worker_slice=worker_slice)

    if shards is not None:
        def make(epoch, skip):
            def per_worker(context: tf.distribute.InputContext):
                if context.num_input_pipelines != len(shards.files):
                    raise RunError(f"{context.num_input_pipelines} input pipelines, {len(shards.files)} file shards")
                i = context.input_pipeline_id
                return stream_dataset(corpus.train_stream.shard(shards.files[i]), shards.rows[i],
                                      shards.replica_batch, epoch, skip * shards.replicas_per_worker, None)
            return strategy.distribute_datasets_from_function(per_worker)
        return make
    if corpus.train_stream is not None:
        return lambda epoch, skip: strategy.experimental_distribute_dataset(stream_dataset(
            corpus.train_stream, corpus.num_train, cfg.batch_size, epoch, skip, worker_slice))
    targets = multi_hot(corpus.train_labels, len(corpus.class_names)) if corpus.multi_label else corpus.train_labels
    return lambda epoch, skip: strategy.experimental_distribute_dataset(make_train_dataset(
        corpus.train_texts, targets, preprocessor, batch_size=cfg.batch_size, seed=cfg.seed + epoch,
        skip_batches=skip, worker_slice=worker_slice))


def _log_lengths(spec, corpus: data_lib.Corpus, cfg: TrainConfig) -> None:
    """The data report's last part, once the tokenizer is known: how long the training texts are in word pieces."""
    lengths = length_summary(spec.preprocess_handle, corpus.iter_train_texts(), cfg.seq_length,
                             count=corpus.num_train)
    if lengths["docs"]:
        log.info("word-piece lengths of %d training texts: median %d, p90 %d, p99 %d, max %d; %.1f%% do not fit "
                 "one --seq-length %d window (training reads the %s; validation and serving up to %d/%d windows)",
                 lengths["docs"], lengths["p50"], lengths["p90"], lengths["p99"], lengths["max"],
                 100 * lengths["share_truncated"], cfg.seq_length, cfg.truncation.replace("_", "+"),
                 cfg.val_windows, cfg.serve_windows)


def _check_export_precision(cfg: TrainConfig, spec) -> None:
    """bf16 export rebuilds the encoder from its bert_convert config: refuse other encoders BEFORE training."""
    if cfg.export_precision == "bf16":
        from trainer.serving_encoder import encoder_config  # noqa: PLC0415

        try:
            encoder_config(spec.encoder_handle)
        except ValueError as e:
            raise RunError(str(e)) from e


def published_version(base_path: Path, run_name: str) -> int | None:
    """The version that finishing `run_name` published, if one exists (its model card says so)."""
    if not base_path.is_dir():
        return None
    for child in base_path.iterdir():
        version = parse_version(child.name)
        card = child / "model_card.json"
        if version is None or not card.is_file():
            continue
        try:
            meta = json.loads(card.read_text())
        except ValueError:
            continue
        if meta.get("run_name") == run_name and meta.get("source") == SOURCE_TRAIN:
            return version
    return None


def _mark_finished(run_ckpt: Path, version: int, path: Path) -> None:
    meta = _read_run(run_ckpt) or {"run_name": run_ckpt.name}
    meta.update(finished=True, version=version, export_path=str(path),
                finished_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    write_json_atomic(run_ckpt / "run.json", meta)


def export_run(cfg: TrainConfig, corpus: data_lib.Corpus, spec, run_name: str, **kwargs) -> RunResult:
    """``_export_run`` in a clean float32 context: a --mixed-precision run's policy and graph rewrites are
    process-wide, and must not leak into the exported graph or its checks (trainer/precision.py)."""
    with float32_context():
        return _export_run(cfg, corpus, spec, run_name, **kwargs)


def _export_run(cfg: TrainConfig, corpus: data_lib.Corpus, spec, run_name: str, *, preprocessor=None,
                train_seconds: float | None = None, source: str = SOURCE_TRAIN) -> RunResult:
    """Restores the run's BEST checkpoint into a fresh model built from `cfg` and publishes the next version.

    The restore checks that every object of the model matched a value of the checkpoint, so a model built
    with other settings than the run's fails loudly instead of exporting half-restored weights.
    """
    from trainer import faults  # noqa: PLC0415
    from trainer.modelcard import build_model_card, first_line  # noqa: PLC0415 (keeps --help fast)
    from trainer.warmup import write_warmup_requests  # noqa: PLC0415

    started = time.perf_counter()
    run_ckpt = Path(cfg.checkpoint_dir) / run_name
    ckpt_path = best_checkpoint_path(run_ckpt)
    preprocessor = preprocessor or Preprocessor(spec.preprocess_handle, seq_length=cfg.seq_length,
                                                truncation=cfg.truncation)
    model = build_classifier(spec.encoder_handle, len(corpus.class_names), seq_length=cfg.seq_length,
                             pooling=cfg.pooling, dropout=cfg.dropout)
    state = make_state(model)
    try:
        state.best_checkpoint.restore(ckpt_path).assert_existing_objects_matched()
    except AssertionError as e:
        raise RunError(f"the best checkpoint {ckpt_path} does not match a model built with this run's settings "
                       f"({e}); was the checkpoint folder copied between runs?") from e
    log.info("restored best checkpoint %s (epoch %d, val %s %.4f)", ckpt_path, int(state.best_epoch.numpy()),
             "micro-F1" if corpus.multi_label else "accuracy",
             float(state.best_val_accuracy.numpy()))
    module = ServingModule(preprocessor, model, list(corpus.class_names), precision=cfg.export_precision,
                           max_windows=cfg.serve_windows, window_overlap=cfg.overlap_tokens,
                           thresholds=[NEUTRAL_THRESHOLD] * len(corpus.class_names) if corpus.multi_label else None)
    val_probabilities = _tune_thresholds(module, corpus, cfg.batch_size) if corpus.multi_label else None
    try:
        report = check_export(module, model, list(corpus.val_texts))
    except ExportCheckError as e:
        raise RunError(str(e)) from e
    log.info("serving graph (%s%s) vs trained model: %s", cfg.export_precision,
             ", rebuilt encoder" if module.encoder is not None else "", report.summary())
    history = Checkpoints(run_ckpt, state).read_history()
    card = build_model_card(cfg, corpus, spec, module, history=history, run_name=run_name,
                            best_epoch=int(state.best_epoch.numpy()),
                            best_val_accuracy=float(state.best_val_accuracy.numpy()),
                            train_seconds=train_seconds, val_probabilities=val_probabilities)
    card["source"] = source
    try:
        card["export_check"] = {**check_validation_accuracy(
            cfg, corpus, module, model, trained_accuracy=float(state.best_val_accuracy.numpy()),
            export_accuracy=card["export_val_micro_f1" if corpus.multi_label else "export_val_accuracy"]),
            "bucket_logit_diffs": report.bucket_diffs,
            "serve_probability_diff": report.serve_diff}
    except ExportCheckError as e:
        raise RunError(str(e)) from e

    def write_extras(tmp_dir: Path) -> None:
        from trainer.opcheck import check_saved_model_ops  # noqa: PLC0415

        # One single-text and one batched request per text: the shapes clients send first after a swap.
        # A headline as well as articles, so the shortest and the longest length bucket are both warm.
        texts = [first_line(t).encode() for t in corpus.val_texts[:1]] + list(corpus.val_texts[:3])
        write_warmup_requests(str(tmp_dir), texts or [b"warm-up"], model_name=cfg.model_name)
        check_saved_model_ops(str(tmp_dir))
        if corpus.test_texts:
            card["test"] = score_test_set(tmp_dir, corpus, Path(cfg.logdir) / run_name)
        card["export_seconds"] = round(time.perf_counter() - started, 1)
        (tmp_dir / "model_card.json").write_text(json.dumps(card, indent=2, sort_keys=True))
        faults.maybe_kill("export_before_rename")

    from trainer.gate import publish_guard  # noqa: PLC0415

    version, path = export_saved_model(module, Path(cfg.model_base_path), write_extras=write_extras,
                                       before_publish=publish_guard(cfg, corpus, run_name))
    faults.maybe_kill("export_after_rename")
    if source == SOURCE_TRAIN:
        _mark_finished(run_ckpt, version, path)
    else:
        meta = _read_run(run_ckpt) or {"run_name": run_name}
        meta["re_exports"] = [*meta.get("re_exports", []), version]
        write_json_atomic(run_ckpt / "run.json", meta)
    log.info("model card: %s", path / "model_card.json")
    return RunResult(run_name, run_ckpt, version, path, float(state.best_val_accuracy.numpy()), history,
                     card.get("test"))


def _tune_thresholds(module: ServingModule, corpus: data_lib.Corpus, batch_size: int) -> np.ndarray:
    """Sets a multi-label module's per-label thresholds to those with the best validation F1, read through the
    serving graph itself (its windows), so they fit what clients get. The test set plays no part.

    Returns the validation probabilities [N, C] (the model card reuses them)."""
    from trainer.modelcard import predict_probabilities  # noqa: PLC0415

    names = list(corpus.class_names)
    true = multi_hot(corpus.val_labels, len(names)) > 0.5
    probabilities = predict_probabilities(module, corpus.val_texts, batch_size)
    thresholds = tune_thresholds(true, probabilities)
    module.thresholds.assign(thresholds)
    log.info("per-label thresholds tuned on validation (best F1 per label): %s",
             ", ".join(f"{n} {t:.2f}" for n, t in zip(names, thresholds, strict=True)))
    return probabilities


def score_test_set(version_dir: Path, corpus: data_lib.Corpus, run_logdir: Path) -> dict:
    """Scores the held-out test set once, through the exported graph; logs it and writes it to TensorBoard."""
    from trainer.evaluate import evaluate_saved_model, format_report  # noqa: PLC0415

    names = list(corpus.class_names)
    if corpus.multi_label:
        true = [tuple(names[i] for i in ids) for ids in corpus.test_labels]
    else:
        true = [names[i] for i in corpus.test_labels]
    report = evaluate_saved_model(version_dir, corpus.test_texts, true, corpus.test_paths)
    report.pop("model", None)  # the temporary export folder
    log.info("%s", format_report(report, what="held-out test set, through the exported model"))
    with tf.summary.create_file_writer(str(run_logdir / "test")).as_default():
        for key in ("micro_f1", "subset_accuracy") if corpus.multi_label else ("accuracy",):
            tf.summary.scalar(f"test/{key}", report[key], step=0)
        tf.summary.scalar("test/macro_f1", report["macro_f1"], step=0)
        rows = "\n".join(f"| {n} | {m['precision']} | {m['recall']} | {m['f1']} | {m['support']} |"
                         for n, m in report["per_class"].items())
        tf.summary.text("test/per_class", "| class | precision | recall | F1 | support |\n|---|---|---|---|---|\n"
                        + rows, step=0)
    return report


def run_to_export(cfg: TrainConfig) -> tuple[str, dict]:
    """For --export-only: the named run (finished or not, with a best checkpoint), else the newest FINISHED run."""
    root = Path(cfg.checkpoint_dir)
    if cfg.run_name:
        meta = _read_run(root / cfg.run_name)
        if meta is None:
            known = ", ".join(p.name for p, _ in _runs(root)) or "none"
            raise RunError(f"--export-only: no run {cfg.run_name!r} under {root} (runs: {known})")
        log.info("exporting run %s (named with --run)", cfg.run_name)
        return cfg.run_name, meta
    finished = [(p, m) for p, m in _runs(root) if m.get("finished")]
    if not finished:
        raise RunError(f"--export-only: no finished run under {root}; train first, or name an unfinished run "
                       "with --run NAME to export its best checkpoint so far")
    finished.sort(key=lambda r: r[1].get("finished_at", r[1].get("started", "")), reverse=True)
    name = finished[0][0].name
    log.info("exporting run %s: the newest finished run under %s (--run NAME picks another)", name, root)
    return name, finished[0][1]


# Settings --export-only takes from today's command line; everything in MODEL_KEYS comes from the run.
EXPORT_OVERRIDES = ("data_dir", "cache_dir", "checkpoint_dir", "logdir", "model_base_path", "model_name",
                    "export_precision", "serve_windows", "window_overlap", "run_name", "export_only",
                    "gate", "gate_min", "gate_tolerance", "gate_data", "load_check")


def export_config(cli_cfg: TrainConfig, recorded: dict, explicit: frozenset[str], run_name: str) -> TrainConfig:
    """The run's recorded config with today's output locations; refuses explicit flags that contradict it."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    base = TrainConfig(**{k: v for k, v in recorded.items() if k in known})
    conflicts = [f"{_flag(k)} {getattr(cli_cfg, k)!r} (run: {getattr(base, k)!r})"
                 for k in sorted(explicit & set(MODEL_KEYS)) if getattr(cli_cfg, k) != getattr(base, k)]
    if conflicts:
        raise RunError(f"--export-only: {', '.join(conflicts)} contradict(s) the settings run {run_name!r} was "
                       "trained with; drop these flags (the run's own settings are used) or train a new run")
    overrides = {k: getattr(cli_cfg, k) for k in EXPORT_OVERRIDES}
    if "data_dir" not in explicit and base.data_dir:
        overrides["data_dir"] = cli_cfg.data_dir or base.data_dir
    overrides["run_name"] = run_name
    return dataclasses.replace(base, **overrides).validate()


def export_only(cfg: TrainConfig, explicit: frozenset[str] = frozenset()) -> RunResult:
    """Re-exports a run's best checkpoint as a new version, with the settings that run was trained with.

    Args:
      cfg: today's settings (output locations, --run, --export-precision are taken from it).
      explicit: the flags given on today's command line (`cli.explicit_keys`); those that contradict the run
        are refused rather than silently ignored.
    """
    cfg.validate()
    run_name, meta = run_to_export(cfg)
    if "config" not in meta:
        raise RunError(f"run {run_name!r} has no recorded config in run.json (made by an older bertbc); "
                       "retrain it, or re-export it with that version")
    cfg = export_config(cfg, meta["config"], explicit, run_name)
    clean_stale_exports(Path(cfg.model_base_path))
    corpus = load_data(cfg, stream_train=True)
    recorded_fingerprint = meta.get("settings", {}).get("data_fingerprint")
    if recorded_fingerprint and recorded_fingerprint != corpus.fingerprint:
        raise RunError(f"--export-only: the data at {cfg.data_dir} is not the data run {run_name!r} was trained on "
                       "(fingerprints differ); the model card's validation numbers would be wrong. Pass the "
                       "run's --data-dir")
    spec = encoders.resolve_encoder(cfg.encoder, encoder_handle=cfg.encoder_handle,
                                    preprocess_handle=cfg.preprocess_handle, cache_dir=cfg.cache_dir)
    _check_export_precision(cfg, spec)
    return export_run(cfg, corpus, spec, run_name, source=SOURCE_EXPORT_ONLY)


def load_data(cfg: TrainConfig, *, stream_train: bool = False) -> data_lib.Corpus:
    """Class folders without test options: the seed notebook's split; anything else: `trainer.own_data`.

    `stream_train`: an own corpus's training texts are read from the files per epoch instead of held (training,
    export); the seed notebook's BBC split is always held (2,225 files).
    """
    from trainer import own_data  # noqa: PLC0415

    if not own_data.is_plain_folder_corpus(cfg.data_dir, test_split=cfg.test_split, test_data=cfg.test_data,
                                           validation_data=cfg.validation_data, encoding=cfg.encoding,
                                           dedup=cfg.dedup, multi_label=cfg.multi_label):
        data = cfg.data_dir or str(data_lib.resolve_data_dir(None, cfg.cache_dir))  # BBC, downloaded if need be
        return own_data.load_own_corpus(
            data, dedup=cfg.dedup, text_columns=cfg.text_columns, label_column=cfg.label_column,
            label_names=cfg.label_names, encoding=cfg.encoding, validation_split=cfg.validation_split,
            test_split=cfg.test_split, seed=cfg.split_seed, validation_data=cfg.validation_data,
            test_data=cfg.test_data, min_examples=cfg.min_examples, max_train_docs=cfg.max_train_docs,
            max_val_docs=cfg.max_val_docs, multi_label=cfg.multi_label, label_separator=cfg.label_separator,
            stream_train=stream_train)
    data_dir = data_lib.resolve_data_dir(cfg.data_dir, cfg.cache_dir)
    return data_lib.load_corpus(data_dir, validation_split=cfg.validation_split, seed=cfg.split_seed,
                                max_train_docs=cfg.max_train_docs, max_val_docs=cfg.max_val_docs)


