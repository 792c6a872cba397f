"""The seed notebook's data analysis, which drives the choice of sequence length.

``python -m trainer analyze --data-dir DIR --out-dir DIR`` (wired in ``trainer/cli.py``) calls
``run_analysis``. It answers three questions on the seeded split of ``trainer.data.load_corpus``:

1. Are the labels similarly distributed in train and validation? (documents and share per class)
2. How long are the documents? (max/mean whitespace words per class)
3. What share of documents does each candidate sequence length truncate? (word-piece lengths against
   128/256/512, as histograms in ``word_piece_lengths.png`` and in TensorBoard under ``tensorboard/``)

Outputs in ``out_dir``: ``analysis.json`` (the returned dict), ``word_piece_lengths.png``, ``tensorboard/``.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import pathlib
import time
from collections.abc import Callable, Sequence

import numpy as np

from trainer.data import Corpus, load_corpus, resolve_data_dir

logger = logging.getLogger(__name__)

TokenLengthsFn = Callable[[list[bytes]], np.ndarray]

PNG_NAME = "word_piece_lengths.png"
JSON_NAME = "analysis.json"
TENSORBOARD_DIR = "tensorboard"
HISTOGRAM_TAG = "word_piece_lengths"
FALLBACK_NOTE = (
    "no token_lengths_fn given: lengths are whitespace word counts, NOT word pieces. WordPiece splits rare "
    "and long words, so real lengths are longer and these truncation shares are lower bounds."
)


def word_counts(texts: Sequence[bytes]) -> np.ndarray:
    """Whitespace word counts of raw byte strings (no decoding needed), int64 [N]."""
    return np.fromiter((len(t.split()) for t in texts), dtype=np.int64, count=len(texts))


def run_analysis(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    token_lengths_fn: TokenLengthsFn | None = None,
    seq_lengths: Sequence[int] = (128, 256, 512),
    reserved_tokens: int = 2,
) -> dict:
    """Analyses a corpus, prints a plain-text table, writes JSON, PNG and TensorBoard histograms.

    Statistics per class are over all documents (train and validation) unless the key names a split.

    Args:
      data_dir: the corpus folder (see ``trainer.data``); resolved with ``resolve_data_dir`` (no download).
      out_dir: where ``analysis.json``, ``word_piece_lengths.png`` and ``tensorboard/`` are written (created).
      token_lengths_fn: maps N raw texts to an int array [N] of word-piece counts without special tokens
        (e.g. ``trainer.preprocessing.token_lengths``); None falls back to whitespace word counts, and the
        output says so (``length_unit``/``note``).
      seq_lengths: candidate sequence lengths (positive ints) to measure truncation against.
      reserved_tokens: positions the packer fills with special tokens ([CLS], [SEP]); a document is
        truncated at sequence length L when its length exceeds ``L - reserved_tokens``. Pass 0 when
        ``token_lengths_fn`` already counts them.

    Returns:
      A JSON-able dict (also written to ``analysis.json``); keys: ``class_names``, ``splits`` (per-class
      counts/shares of train and validation), ``max_share_difference``, ``duplicates``, ``words`` and ``lengths`` (per class
      and ``"all"``), ``length_unit``, ``note``, ``seq_lengths``, ``outputs``, ``seconds``.
    """
    if isinstance(reserved_tokens, bool) or not isinstance(reserved_tokens, int) or reserved_tokens < 0:
        raise ValueError(f"reserved_tokens must be an int >= 0, got {reserved_tokens!r}")
    seq_lengths = tuple(seq_lengths)
    if not seq_lengths or any(isinstance(s, bool) or not isinstance(s, int) or s <= reserved_tokens for s in seq_lengths):
        raise ValueError(f"seq_lengths must be ints > reserved_tokens={reserved_tokens}, got {seq_lengths!r}")
    if data_dir is None:
        raise ValueError("data_dir is required (resolve it first with trainer.data.resolve_data_dir)")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    root = resolve_data_dir(data_dir, cache_dir=out)  # explicit folder: no cache or network use
    corpus = load_corpus(root)
    t_load = time.perf_counter() - t0

    texts = list(corpus.train_texts + corpus.val_texts)
    labels = np.asarray(corpus.train_labels + corpus.val_labels, dtype=np.int64)
    t1 = time.perf_counter()
    words = word_counts(texts)
    if token_lengths_fn is None:
        lengths, unit, note = words, "whitespace_words", FALLBACK_NOTE
    else:
        lengths = np.asarray(token_lengths_fn(texts)).astype(np.int64).reshape(-1)
        if lengths.shape != (len(texts),):
            raise ValueError(f"token_lengths_fn returned shape {lengths.shape}, expected ({len(texts)},)")
        unit, note = "word_pieces", None
    t_lengths = time.perf_counter() - t1

    groups = {name: labels == i for i, name in enumerate(corpus.class_names)}
    groups["all"] = np.ones_like(labels, dtype=bool)
    result = {
        "data_dir": str(root),
        "fingerprint": corpus.fingerprint,
        "class_names": list(corpus.class_names),
        "invalid_utf8_paths": list(corpus.invalid_utf8_paths),
        "length_unit": unit,
        "note": note,
        "seq_lengths": list(seq_lengths),
        "reserved_tokens": reserved_tokens,
        **_split_stats(corpus),
        "duplicates": _duplicates(corpus),
        "words": {g: _describe(words[m]) for g, m in groups.items()},
        "lengths": {
            g: {**_describe(lengths[m]), "truncated_share": _truncated(lengths[m], seq_lengths, reserved_tokens)}
            for g, m in groups.items()
        },
    }
    outputs = {
        "json": str(out / JSON_NAME),
        "png": str(out / PNG_NAME),
        "tensorboard": str(out / TENSORBOARD_DIR),
    }
    result["outputs"] = outputs
    table = format_table(result)
    print(table)
    _write_png(out / PNG_NAME, lengths, groups, seq_lengths, unit)
    _write_tensorboard(out / TENSORBOARD_DIR, lengths, groups, result, table)
    result["seconds"] = {
        "load": round(t_load, 3), "lengths": round(t_lengths, 3), "total": round(time.perf_counter() - t0, 3)
    }
    (out / JSON_NAME).write_text(json.dumps(result, indent=2) + "\n")
    logger.info("analysis written to %s (%.1f s)", out, result["seconds"]["total"])
    return result


def _split_stats(corpus: Corpus) -> dict:
    train, val = corpus.class_counts("train"), corpus.class_counts("validation")
    n_train, n_val = sum(train.values()), sum(val.values())
    per_class = {
        c: {
            "train": train[c], "validation": val[c], "total": train[c] + val[c],
            "train_share": train[c] / n_train, "validation_share": val[c] / n_val,
        }
        for c in corpus.class_names
    }
    diff = max(abs(v["train_share"] - v["validation_share"]) for v in per_class.values())
    return {
        "splits": {"train": n_train, "validation": n_val, "per_class": per_class},
        "max_share_difference": diff,
    }


def _duplicates(corpus: Corpus) -> dict:
    """Exact byte-identical documents: extra copies overall, and validation documents also in train (leakage)."""
    copies = collections.Counter(corpus.train_texts + corpus.val_texts)
    return {
        "extra_copies": sum(n - 1 for n in copies.values()),
        "val_docs_also_in_train": sum(corpus.val_in_train()),
    }


def _describe(x: np.ndarray) -> dict:
    return {
        "count": int(x.size),
        "min": int(x.min()), "max": int(x.max()), "mean": float(x.mean()),
        "p50": float(np.percentile(x, 50)), "p90": float(np.percentile(x, 90)),
        "p95": float(np.percentile(x, 95)), "p99": float(np.percentile(x, 99)),
    }


def _truncated(x: np.ndarray, seq_lengths: Sequence[int], reserved: int) -> dict[str, float]:
    return {str(s): float(np.mean(x > s - reserved)) for s in seq_lengths}


def format_table(result: dict) -> str:
    """The plain-text report printed by ``run_analysis``."""
    seqs = result["seq_lengths"]
    per = result["splits"]["per_class"]
    lines = [
        f"corpus {result['data_dir']}  fingerprint {result['fingerprint'][:16]}",
        f"{result['splits']['train']} train / {result['splits']['validation']} validation documents; "
        f"largest train-vs-validation class-share gap {result['max_share_difference']:.1%}",
        f"lengths: {result['length_unit']} (truncated at L = longer than L-{result['reserved_tokens']})",
    ]
    dup = result["duplicates"]
    if dup["extra_copies"]:
        lines.append(
            f"{dup['extra_copies']} exact duplicate document(s); {dup['val_docs_also_in_train']} validation "
            "document(s) also appear in train (validation scores are slightly optimistic)"
        )
    if result["note"]:
        lines.append(f"NOTE: {result['note']}")
    if result["invalid_utf8_paths"]:
        lines.append(f"invalid UTF-8 (kept): {', '.join(result['invalid_utf8_paths'])}")
    head = (
        f"{'class':<14}{'train':>7}{'share':>8}{'val':>6}{'share':>8}{'total':>7}"
        f"{'words max':>11}{'mean':>8}{'len p50':>9}{'p95':>7}{'max':>7}"
        + "".join(f"{'>' + str(s):>8}" for s in seqs)
    )
    lines += ["", head, "-" * len(head)]
    for g in [*result["class_names"], "all"]:
        w, ln = result["words"][g], result["lengths"][g]
        if g == "all":
            counts = (f"{result['splits']['train']:>7}{'':>8}{result['splits']['validation']:>6}{'':>8}"
                      f"{w['count']:>7}")
        else:
            p = per[g]
            counts = (f"{p['train']:>7}{p['train_share']:>8.1%}{p['validation']:>6}{p['validation_share']:>8.1%}"
                      f"{p['total']:>7}")
        lines.append(
            f"{g:<14}{counts}{w['max']:>11}{w['mean']:>8.1f}{ln['p50']:>9.0f}{ln['p95']:>7.0f}{ln['max']:>7}"
            + "".join(f"{ln['truncated_share'][str(s)]:>8.1%}" for s in seqs)
        )
    return "\n".join(lines)


def _write_png(path: pathlib.Path, lengths: np.ndarray, groups: dict, seq_lengths: Sequence[int], unit: str) -> None:
    # Figure + Agg canvas directly: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(groups)
    cols = min(3, n)
    rows = -(-n // cols)
    fig = Figure(figsize=(5 * cols, 3.2 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    # A few very long documents would squeeze the interesting range; they go into the last bin instead.
    top = int(max(min(lengths.max(), max(2 * max(seq_lengths), np.percentile(lengths, 99))), max(seq_lengths))) + 1
    bins = np.linspace(0, top, 61)
    for i, (name, mask) in enumerate(groups.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        values = lengths[mask]
        ax.hist(np.minimum(values, top - 1), bins=bins, color="tab:blue" if name != "all" else "tab:gray")
        for s, color in zip(seq_lengths, ["tab:green", "tab:orange", "tab:red", "tab:purple"] * 4, strict=False):
            ax.axvline(s, color=color, linestyle="--", linewidth=1.2, label=f"seq {s}")
        over = int((values >= top).sum())
        ax.set_title(f"{name} (n={int(mask.sum())}" + (f"; {over} longer than {top - 1} in last bin)" if over else ")"))
        ax.set_xlabel(unit.replace("_", " "))
        ax.set_ylabel("documents")
        if i == 0:
            ax.legend(fontsize="small")
    fig.suptitle(f"document lengths ({unit.replace('_', ' ')}) vs sequence length")
    fig.savefig(path, dpi=90)


def _write_tensorboard(logdir: pathlib.Path, lengths: np.ndarray, groups: dict, result: dict, table: str) -> None:
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(logdir))
    unit = result["length_unit"]
    with writer.as_default():
        for name, mask in groups.items():
            tf.summary.histogram(
                f"{HISTOGRAM_TAG}/{name}", lengths[mask].astype(np.float64), step=0, buckets=60,
                description=f"document length in {unit} for class {name}",
            )
            for s, share in result["lengths"][name]["truncated_share"].items():
                tf.summary.scalar(f"truncated_share_at_{s}/{name}", share, step=0)
        # TensorBoard renders text as Markdown; indenting by 4 spaces keeps the table monospaced.
        tf.summary.text("analysis/table", "\n".join("    " + line for line in table.splitlines()), step=0)
    writer.flush()
    writer.close()
