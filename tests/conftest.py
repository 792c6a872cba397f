"""Shared fixtures: a learnable toy corpus written per test session, and the tiny random encoder."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.config import TrainConfig

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]
BBC_DIR = REPO_ROOT.parent / "shared" / "data" / "bbc"

# Each class has its own keywords; filler words are shared, so only the keywords tell classes apart.
TOY_KEYWORDS = {
    "business": ["shares", "profit", "market", "bank", "economy"],
    "politics": ["election", "minister", "party", "vote", "parliament"],
    "sport": ["football", "match", "goal", "team", "coach"],
}
FILLER = ["the", "a", "of", "and", "in", "to", "said", "was", "on", "for", "with", "new", "year", "people"]


def toy_text(label: str, rng: random.Random, words: int = 24) -> str:
    body = [rng.choice(FILLER) for _ in range(words)]
    for _ in range(4):
        body.insert(rng.randrange(len(body)), rng.choice(TOY_KEYWORDS[label]))
    return " ".join(body) + "."


def write_toy_corpus(root: Path, docs_per_class: int = 40, seed: int = 0) -> Path:
    """A corpus in bbc-fulltext.zip's layout (class folders of NNN.txt) with a learnable signal."""
    rng = random.Random(seed)
    for label in TOY_KEYWORDS:
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(docs_per_class):
            (folder / f"{i + 1:03d}.txt").write_text(toy_text(label, rng))
    return root


@pytest.fixture(scope="session")
def toy_corpus_dir(tmp_path_factory) -> Path:
    return write_toy_corpus(tmp_path_factory.mktemp("toy") / "bbc")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One encoder cache for the session, so the tiny encoder is built once."""
    return tmp_path_factory.mktemp("bertbc-cache")


@pytest.fixture(scope="session")
def tiny_encoder(cache_dir):
    from trainer import encoders

    return encoders.resolve_encoder("tiny-random", cache_dir=str(cache_dir))


# The fresh-process load check costs a TensorFlow import per export; tests/test_loadcheck.py covers it.
TOY = dict(encoder="tiny-random", seq_length=48, batch_size=8, learning_rate=2e-3, warmup_fraction=0.1,
           pooling="mean", truncation="head", steps_per_summary=2, load_check="off")


def toy_config(tmp: Path, corpus: Path, cache: Path, **overrides) -> TrainConfig:
    values = dict(TOY, data_dir=str(corpus), cache_dir=str(cache), logdir=str(tmp / "logs"),
                  checkpoint_dir=str(tmp / "ckpt"), model_base_path=str(tmp / "models" / "bertbc"), epochs=4)
    values.update(overrides)
    return TrainConfig(**values).validate()


@pytest.fixture(scope="session")
def trained(tmp_path_factory, toy_corpus_dir, cache_dir, tiny_encoder):
    """One real training run (toy corpus, tiny encoder, 4 epochs) shared by the tests that inspect its outputs."""
    from trainer import run

    tmp = tmp_path_factory.mktemp("run")
    cfg = toy_config(tmp, toy_corpus_dir, cache_dir)
    return cfg, run.train_and_export(cfg)


@pytest.fixture(scope="session")
def bbc_dir() -> Path:
    if not BBC_DIR.is_dir():
        pytest.skip(f"BBC corpus not present at {BBC_DIR}")
    return BBC_DIR


def run_trainer(args: list[str], env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m trainer ARGS` in a real subprocess (what a user runs; SIGKILL-able)."""
    return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def toy_run_flags(out: Path, cache_dir: Path, *, epochs: int = 1) -> list[str]:
    """A small tiny-random run writing into `out` (logs/, ckpt/, models/bertbc/); the caller adds its data flags."""
    return ["--cache-dir", str(cache_dir), "--encoder", TOY["encoder"], "--seq-length", str(TOY["seq_length"]),
            "--batch-size", "8", "--learning-rate", str(TOY["learning_rate"]), "--epochs", str(epochs),
            "--val-windows", "1", "--logdir", str(out / "logs"), "--checkpoint-dir", str(out / "ckpt"),
            "--model-base-path", str(out / "models" / "bertbc")]


def trainer_flags(cfg: TrainConfig) -> list[str]:
    """The command line that reproduces `cfg` (the settings toy_config sets)."""
    return ["--data-dir", cfg.data_dir, "--cache-dir", cfg.cache_dir, "--encoder", cfg.encoder,
            "--seq-length", str(cfg.seq_length), "--batch-size", str(cfg.batch_size),
            "--learning-rate", str(cfg.learning_rate), "--truncation", cfg.truncation, "--epochs", str(cfg.epochs),
            "--logdir", cfg.logdir, "--checkpoint-dir", cfg.checkpoint_dir, "--model-base-path",
            cfg.model_base_path, "--steps-per-summary", "1", "--load-check", cfg.load_check]


@pytest.fixture(scope="session")
def deterministic_encoder(tmp_path_factory, tiny_encoder) -> tuple[str, str]:
    """(encoder, preprocess) paths of the tiny random BERT WITHOUT dropout, for tests that compare weights across
    device layouts (each replica draws its own dropout masks, seeded by its replica id, so only a dropout-free
    model can match exactly across 1, 2 and 3 replicas)."""
    import dataclasses

    from trainer import bert_convert

    vocab = Path(tiny_encoder.preprocess_handle) / "assets" / "vocab.txt"
    base = bert_convert.BertConfig(vocab_size=len(bert_convert._read_vocab(vocab)), **bert_convert.TINY_RANDOM_CONFIG)
    config = dataclasses.replace(base, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    path = tmp_path_factory.mktemp("nodropout") / "encoder"
    bert_convert.save_encoder(config, bert_convert.random_weights(config, seed=0), path)
    return str(path), tiny_encoder.preprocess_handle


def latest_weights(run_dir: Path) -> dict[str, object]:
    """Every model variable of a run's latest/ checkpoint (optimizer slots and counters left out), by key."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(Path(run_dir) / "latest")))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.startswith("model/") and "OPTIMIZER_SLOT" not in k}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (CI=true) a skipped test is a failure: a missing tool or file must not pass as green."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which counts as a failure: {reason}"


_COMPOSE_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def compose_interpolate(node):
    """Resolves compose's `${VAR:-default}` to its default (as if no variable were set) and `$$` to `$`."""
    if isinstance(node, dict):
        return {k: compose_interpolate(v) for k, v in node.items()}
    if isinstance(node, list):
        return [compose_interpolate(v) for v in node]
    if isinstance(node, str):
        return _COMPOSE_VAR.sub(lambda m: "$" if m.group(0) == "$$" else (m.group(3) or ""), node)
    return node
