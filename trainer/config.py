"""The one typed settings object of the trainer, filled from flags (or env in Docker) and validated at start."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path


def default_cache_dir() -> str:
    """Built encoders and the downloaded corpus live here: `$BERTBC_CACHE_DIR` or `~/.cache/bertbc`."""
    return os.environ.get("BERTBC_CACHE_DIR") or str(Path.home() / ".cache" / "bertbc")


class ConfigError(ValueError):
    """A setting is out of range; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; recorded verbatim in the model card and TensorBoard HParams.

    Defaults are the best configuration measured on BBC with the default encoder (see README, "Accuracy");
    `SEED_NOTEBOOK` below holds the seed notebook's settings, one flag set away.
    """

    data_dir: str | None = None  # --data (alias --data-dir): class folders, CSV/TSV, JSONL, Parquet, globs
    # Own-corpus columns and splits (corpus/ package; docs/own-data.md). Class folders ignore the columns.
    text_columns: tuple[str, ...] = ("text",)
    label_column: str = "label"
    label_names: str | None = None  # "1=World,2=Sports" or a file of value=name lines: served names and order
    encoding: str = "utf-8"
    validation_data: str | None = None
    test_data: str | None = None
    test_split: float = 0.0  # stratified held-out test share, scored once through the exported graph
    min_examples: int = 2
    dedup: bool = False  # drop validation/test rows that duplicate an earlier split (exact, normalized, near)
    class_weights: str = "none"  # "balanced": loss weighted by inverse training-class frequency (trainer/weights.py)
    multi_label: bool = False  # several (or no) labels per row: sigmoid head, tuned thresholds (trainer/multilabel.py)
    label_separator: str | None = None  # splits a CSV label cell into several labels, e.g. "|" (with --multi-label)
    shuffle_buffer: int = 100_000  # rows held for shuffling a streamed training split (own corpora)
    input_sharding: str = "auto"  # multi-worker: "file" (each worker its files), "data" or "auto" (trainer/sharding.py)
    cache_dir: str = dataclasses.field(default_factory=default_cache_dir)
    encoder: str = "minilm-l6"
    encoder_handle: str | None = None
    preprocess_handle: str | None = None
    pooling: str = "mean"  # "cls" (the seed's pooled_output) or "mean" (masked mean of sequence_output)
    truncation: str = "head"  # "head" (the seed's, best measured here) or "head_tail"
    epochs: int = 4
    batch_size: int = 16
    seq_length: int = 256
    learning_rate: float = 5e-5
    warmup_fraction: float = 0.1
    dropout: float = 0.1
    seed: int = 42
    split_seed: int = 42  # the seed notebook's text_dataset_from_directory seed: keep it to compare numbers
    validation_split: float = 0.2
    logdir: str = "logs"
    checkpoint_dir: str = "checkpoints"
    model_base_path: str = "models/bertbc"
    model_name: str = "bertbc"
    run_name: str | None = None
    strategy: str = "auto"  # auto | default | mirrored
    logical_cpus: int = 0  # >1 splits the CPU into logical devices (to exercise MirroredStrategy without GPUs)
    mixed_precision: str = "off"  # off | bf16 | fp16 (per device: trainer/precision.py)
    export_precision: str = "fp32"  # fp32 | bf16: the exported serving graph's numerics
    # The exported graph reads each text in up to N windows of seq_length (1 = the head only, as trained);
    # 4 measured best on BBC (README, "Long documents"). Export-time only: --export-only may change it.
    serve_windows: int = 4
    window_overlap: int | None = None  # word pieces shared by consecutive windows; None = seq_length // 4
    # Validation (and so the choice of the best checkpoint) reads each document in up to N windows, like the
    # exported model does by default: the checkpoint kept is the one best at what is served (README, "Accuracy").
    val_windows: int = 4
    deterministic: bool = False  # tf.config.experimental.enable_op_determinism (bit-identical reruns on GPUs too)
    max_train_docs: int | None = None
    max_val_docs: int | None = None
    export_only: bool = False
    resume: bool = True
    steps_per_summary: int = 10
    save_every_minutes: float = 10.0  # step checkpoint in latest/steps/ (0 = only at epoch ends and on signals)
    # Publishing (trainer/gate.py, trainer/loadcheck.py): export-time only, like --export-precision.
    gate: str = "on"  # on | off: publish only if not worse than the served version
    gate_min: float | None = None  # absolute floor of the gate's metric
    gate_tolerance: float | None = None  # how far below the served score; None = one document of the set
    gate_data: str | None = None  # a gold set (own-corpus formats) instead of the validation split
    load_check: str = "on"  # on | off: load the candidate in a fresh process before publishing

    def validate(self) -> TrainConfig:
        """Fail fast, naming the flag, before any expensive work starts."""
        positive_ints = {"epochs": self.epochs, "batch_size": self.batch_size, "seq_length": self.seq_length,
                         "steps_per_summary": self.steps_per_summary}
        for name, value in positive_ints.items():
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.seq_length < 8 or self.seq_length > 512:
            raise ConfigError(f"--seq-length must be in [8, 512] (BERT position embeddings), got {self.seq_length}")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"--learning-rate must be in (0, 1), got {self.learning_rate}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"--warmup-fraction must be in [0, 1), got {self.warmup_fraction}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not self.save_every_minutes >= 0:
            raise ConfigError(f"--save-every-minutes must be >= 0, got {self.save_every_minutes}")
        if not 0 < self.validation_split < 1:
            raise ConfigError(f"--validation-split must be in (0, 1), got {self.validation_split}")
        if not 0 <= self.test_split < 1 or self.test_split + self.validation_split >= 1:
            raise ConfigError(f"--test-split must be in [0, 1) and leave rows to train on with --validation-split "
                              f"{self.validation_split}, got {self.test_split}")
        if self.min_examples < 1:
            raise ConfigError(f"--min-examples must be >= 1, got {self.min_examples}")
        if self.shuffle_buffer < 1:
            raise ConfigError(f"--shuffle-buffer must be >= 1, got {self.shuffle_buffer}")
        if not self.text_columns or any(not c for c in self.text_columns):
            raise ConfigError("--text-column must name a column")
        choices = {"pooling": ("cls", "mean"), "truncation": ("head", "head_tail"),
                   "strategy": ("auto", "default", "mirrored"), "mixed_precision": ("off", "bf16", "fp16"),
                   "export_precision": ("fp32", "bf16"), "gate": ("on", "off"), "load_check": ("on", "off"),
                   "class_weights": ("none", "balanced"), "input_sharding": ("auto", "file", "data")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"--{name.replace('_', '-')} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("max_train_docs", "max_val_docs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        for name in ("serve_windows", "val_windows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if max(self.serve_windows, self.val_windows) > 1 and not 0 <= self.overlap_tokens < self.seq_length - 2:
            raise ConfigError(f"--window-overlap must be in [0, --seq-length - 2) = [0, {self.seq_length - 2}), "
                              f"got {self.window_overlap}")
        for name in ("gate_min", "gate_tolerance"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1] (a share of the metric), got {value}")
        if self.label_separator is not None and not self.multi_label:
            raise ConfigError("--label-separator splits a cell into several labels: it needs --multi-label")
        if self.label_separator == "":
            raise ConfigError("--label-separator must not be empty")
        if (self.encoder_handle is None) != (self.preprocess_handle is None):
            raise ConfigError("--encoder-handle and --preprocess-handle must be given together")
        return self

    @property
    def overlap_tokens(self) -> int:
        """--window-overlap, or a quarter of --seq-length when unset (64 at 256)."""
        return self.seq_length // 4 if self.window_overlap is None else self.window_overlap

    def hparams(self) -> dict[str, object]:
        """The settings that change the model, as TensorBoard HParams values (str/int/float/bool only)."""
        keys = ("encoder", "pooling", "truncation", "epochs", "batch_size", "seq_length", "learning_rate",
                "warmup_fraction", "dropout", "seed", "split_seed", "mixed_precision", "val_windows")
        return {k: getattr(self, k) for k in keys}


# Settings that define the trained model and its training: a rerun resumes a run only if all are equal, and
# --export-only takes them from the run, never from today's command line.
MODEL_KEYS = ("encoder", "encoder_handle", "preprocess_handle", "pooling", "truncation", "epochs", "batch_size",
              "seq_length", "learning_rate", "warmup_fraction", "dropout", "seed", "split_seed", "validation_split",
              "mixed_precision", "max_train_docs", "max_val_docs", "val_windows")

# The seed notebook's settings: [CLS] pooled_output, lr 2e-5, 3 epochs, 128 tokens from the head, no warm-up,
# validated on the head only.
SEED_NOTEBOOK = {"pooling": "cls", "truncation": "head", "epochs": 3, "batch_size": 16, "seq_length": 128,
                 "learning_rate": 2e-5, "warmup_fraction": 0.0, "val_windows": 1}
