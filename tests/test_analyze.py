"""Tests for trainer/analyze.py on a tiny corpus with known lengths."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from trainer.analyze import FALLBACK_NOTE, HISTOGRAM_TAG, run_analysis, word_counts
from trainer.data import load_corpus

# class -> whitespace word counts of its 5 documents
WORDS = {"aaa": [1, 2, 3, 4, 5], "bbb": [10, 20, 30, 40, 50]}


@pytest.fixture
def corpus_dir(tmp_path):
    root = tmp_path / "corpus"
    for cls, counts in WORDS.items():
        (root / cls).mkdir(parents=True)
        for i, n in enumerate(counts):
            (root / cls / f"{i:03d}.txt").write_bytes(b" ".join([b"w%d" % j for j in range(n)]) + b"\n")
    (root / "README.TXT").write_bytes(b"not a document")
    return root


def double_words(texts: list[bytes]) -> np.ndarray:
    """A known stand-in for the word-piece counter: 2 pieces per whitespace word."""
    return np.array([2 * len(t.split()) for t in texts], dtype=np.int32)


@pytest.mark.parametrize(
    "fn, reserved, seqs, unit, expected",
    [
        # 2*w > 8-2 <=> w > 3; 2*w > 32-2 <=> w > 15
        (double_words, 2, (8, 32), "word_pieces",
         {"aaa": {"8": 0.4, "32": 0.0}, "bbb": {"8": 1.0, "32": 0.8}, "all": {"8": 0.7, "32": 0.4}}),
        # reserved_tokens=0: 2*w > 8 <=> w > 4; 2*w > 32 <=> w > 16
        (double_words, 0, (8, 32), "word_pieces",
         {"aaa": {"8": 0.2, "32": 0.0}, "bbb": {"8": 1.0, "32": 0.8}, "all": {"8": 0.6, "32": 0.4}}),
        # fallback: whitespace words, w > 4-2 and w > 30-2
        (None, 2, (4, 30), "whitespace_words",
         {"aaa": {"4": 0.6, "30": 0.0}, "bbb": {"4": 1.0, "30": 0.6}, "all": {"4": 0.8, "30": 0.3}}),
    ],
    ids=["word-pieces", "no-reserved", "fallback"],
)
def test_truncation_shares_and_units(corpus_dir, tmp_path, capsys, fn, reserved, seqs, unit, expected):
    result = run_analysis(corpus_dir, tmp_path / "out", token_lengths_fn=fn, seq_lengths=seqs, reserved_tokens=reserved)
    assert result["length_unit"] == unit
    assert (result["note"] == FALLBACK_NOTE) is (fn is None)
    for group, shares in expected.items():
        assert result["lengths"][group]["truncated_share"] == pytest.approx(shares), group
    printed = capsys.readouterr().out
    assert "aaa" in printed and "bbb" in printed and ("NOTE:" in printed) is (fn is None)
    for s in seqs:
        assert f">{s}" in printed


def test_counts_words_and_outputs(corpus_dir, tmp_path):
    out = tmp_path / "out"
    result = run_analysis(corpus_dir, out, token_lengths_fn=double_words, seq_lengths=(8, 32))

    corpus = load_corpus(corpus_dir)
    per = result["splits"]["per_class"]
    assert (result["splits"]["train"], result["splits"]["validation"]) == (8, 2)
    for cls in WORDS:
        assert per[cls]["train"] == corpus.class_counts("train")[cls]
        assert per[cls]["validation"] == corpus.class_counts("validation")[cls]
        assert per[cls]["total"] == 5
    assert sum(p["train_share"] for p in per.values()) == pytest.approx(1.0)
    assert sum(p["validation_share"] for p in per.values()) == pytest.approx(1.0)
    assert result["max_share_difference"] == pytest.approx(
        max(abs(p["train_share"] - p["validation_share"]) for p in per.values())
    )
    assert result["words"]["aaa"]["max"] == 5 and result["words"]["aaa"]["mean"] == pytest.approx(3.0)
    assert result["words"]["bbb"]["max"] == 50 and result["words"]["bbb"]["mean"] == pytest.approx(30.0)
    assert result["words"]["all"]["count"] == 10 and result["words"]["all"]["mean"] == pytest.approx(16.5)
    assert result["lengths"]["bbb"]["max"] == 100 and result["lengths"]["aaa"]["mean"] == pytest.approx(6.0)
    assert result["fingerprint"] == corpus.fingerprint
    assert result["duplicates"] == {"extra_copies": 0, "val_docs_also_in_train": 0}

    # analysis.json holds the returned numbers
    assert json.loads((out / "analysis.json").read_text()) == json.loads(json.dumps(result))

    # a real PNG that matplotlib can decode
    png = out / "word_piece_lengths.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_tensorboard_histograms(corpus_dir, tmp_path):
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    out = tmp_path / "out"
    run_analysis(corpus_dir, out, token_lengths_fn=double_words, seq_lengths=(8, 32))
    logdir = out / "tensorboard"
    assert list(logdir.glob("events.out.tfevents.*"))
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    tags = set(acc.Tags()["tensors"])
    expected = {"aaa": 5, "bbb": 5, "all": 10}
    for group, n_docs in expected.items():
        tag = f"{HISTOGRAM_TAG}/{group}"
        assert tag in tags
        assert acc.SummaryMetadata(tag).plugin_data.plugin_name == "histograms"
        (event,) = acc.Tensors(tag)
        hist = tensor_util.make_ndarray(event.tensor_proto)  # [buckets, 3]: left edge, right edge, count
        assert hist.shape[1] == 3 and hist[:, 2].sum() == pytest.approx(n_docs)
        assert hist[0, 0] == pytest.approx(2 * min(WORDS.get(group, [1])))
    assert "truncated_share_at_8/all" in tags and "analysis/table" in tags


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seq_lengths": ()}, "seq_lengths"),
        ({"seq_lengths": (2,)}, "seq_lengths"),
        ({"seq_lengths": (128.0,)}, "seq_lengths"),
        ({"reserved_tokens": -1}, "reserved_tokens"),
        ({"token_lengths_fn": lambda texts: np.zeros(len(texts) + 1)}, "token_lengths_fn"),
    ],
)
def test_bad_arguments(corpus_dir, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_analysis(corpus_dir, tmp_path / "out", **kwargs)


def test_word_counts_on_raw_bytes():
    texts = [b"", b"one", b"  two\twords\n", b"caf\xe9 \xff bytes"]
    assert word_counts(texts).tolist() == [0, 1, 2, 3]


def test_missing_data_dir_is_a_data_error(tmp_path):
    from trainer.data import DataError

    with pytest.raises(DataError, match="does not exist"):
        run_analysis(tmp_path / "nope", tmp_path / "out")
    assert not (pathlib.Path(tmp_path) / "out" / "analysis.json").exists()


def test_duplicates_are_counted(corpus_dir, tmp_path):
    # copy every aaa document into bbb under new names: 5 extra copies, and any validation copy has its twin
    for src in sorted((corpus_dir / "aaa").iterdir()):
        (corpus_dir / "bbb" / f"copy_{src.name}").write_bytes(src.read_bytes())
    corpus = load_corpus(corpus_dir)
    train = set(corpus.train_texts)
    result = run_analysis(corpus_dir, tmp_path / "out", seq_lengths=(8,))
    assert result["duplicates"]["extra_copies"] == 5
    assert result["duplicates"]["val_docs_also_in_train"] == sum(t in train for t in corpus.val_texts)
