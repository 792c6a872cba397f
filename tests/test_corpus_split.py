"""corpus.split / corpus.stratify: the hash split, stratified and multi-label test splits, explicit split
files, and the seed notebook's folder split checked against trainer.data.load_corpus."""

from __future__ import annotations

import collections
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from corpus import CorpusError, Row, iter_rows
from corpus.split import (
    HashSplit,
    SplitSpec,
    StratifiedSplit,
    iter_split,
    notebook_split,
    row_key,
)
from corpus.stratify import desired_per_label, iterative_stratification
from tests.conftest import BBC_DIR, REPO_ROOT, write_toy_corpus


def _csv(path, rows: list[tuple[str, str]]):
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return str(path)


# ----------------------------------------------------------------------------------------------- hashing


def test_hash_split_is_deterministic_per_text_and_seeded():
    texts = [f"document number {i}" for i in range(3000)]
    spec = SplitSpec(validation_split=0.2, test_split=0.1, seed=7)
    a = [HashSplit(spec).assign(t) for t in texts]
    assert a == [HashSplit(spec).assign(t) for t in reversed(texts)][::-1]  # order does not matter
    counts = collections.Counter(a)
    assert abs(counts["validation"] / 3000 - 0.2) < 0.03 and abs(counts["test"] / 3000 - 0.1) < 0.03
    other = [HashSplit(SplitSpec(0.2, 0.1, seed=8)).assign(t) for t in texts]
    assert sum(x != y for x, y in zip(a, other, strict=True)) > 500  # another seed, another split
    assert row_key("x", 7) == row_key("x", 7) != row_key("x", 8)


@pytest.mark.parametrize(
    "kw, message",
    [({"validation_split": 1.0}, "validation_split must be a fraction in [0, 1), got 1.0"),
     ({"test_split": -0.1}, "test_split must be a fraction in [0, 1), got -0.1"),
     ({"validation_split": 0.5, "test_split": 0.5}, "validation_split + test_split must be below 1"),
     ({"seed": 1.5}, "seed must be an int, got 1.5")],
)
def test_split_spec_errors(kw, message):
    with pytest.raises(CorpusError, match=re.escape(message)):
        SplitSpec(**kw)


def test_iter_split_on_a_file_streams_hash_split_and_drops_bad_rows(tmp_path):
    f = _csv(tmp_path / "d.csv", [(f"text {i}", "ab"[i % 2]) for i in range(200)] + [("", "a")])
    pairs = list(iter_split(f, SplitSpec(0.25, 0.0, 3), label_column="label"))
    assert [p[1].id for p in pairs] == [f"{f}:{i}" for i in range(1, 202)]  # file order kept
    splitter = HashSplit(SplitSpec(0.25, 0.0, 3))
    assert all(s == splitter.assign(r.text) for s, r in pairs[:-1])
    assert pairs[-1][0] == "dropped" and pairs[-1][1].reason.endswith("empty text (column(s) 'text')")
    only_val = list(iter_split(f, SplitSpec(0.25, 0.0, 3), splits=["validation"], label_column="label"))
    assert only_val == [p for p in pairs if p[0] == "validation"]


# ---------------------------------------------------------------------------------------- stratification


@pytest.mark.parametrize(
    "n, fractions, expected",
    [(10, (0.7, 0.2, 0.1), [7, 2, 1]), (2, (0.8, 0.1, 0.1), [0.8, 0.2, 1]), (3, (0.8, 0.1, 0.1), [1, 1, 1]),
     (2, (0.8, 0.2, 0.0), [1, 1, 0]), (1, (0.8, 0.1, 0.1), [0.8, 0.1, 0.1])],
)
def test_desired_per_label_keeps_one_for_test_and_validation(n, fractions, expected):
    assert desired_per_label(n, fractions) == pytest.approx(expected)


def test_stratified_test_split_has_every_class(tmp_path):
    sizes = {"big": 300, "mid": 60, "small": 9, "tiny": 3, "pair": 2}
    rows = [(f"{label} doc {i}", label) for label, n in sizes.items() for i in range(n)]
    f = _csv(tmp_path / "d.csv", rows)
    spec = SplitSpec(validation_split=0.1, test_split=0.1, seed=1)
    splitter = StratifiedSplit.fit(iter_rows(f, label_column="label"), spec)
    per = collections.defaultdict(collections.Counter)
    for split, row in iter_split(f, spec, splitter=splitter, label_column="label"):
        per[split][row.labels[0]] += 1
    assert set(per["test"]) == set(sizes)  # every class present in test
    assert set(per["validation"]) == set(sizes) - {"pair"}  # 2 rows: one train, one test
    assert per["test"]["big"] == 30 and per["validation"]["big"] == 30 and per["test"]["mid"] == 6
    assert all(per["train"][c] >= 1 for c in sizes)
    assert StratifiedSplit.fit(iter_rows(f, label_column="label"), spec).thresholds == splitter.thresholds


def _csr(label_sets):
    indptr = np.cumsum([0] + [len(s) for s in label_sets])
    return indptr, np.array([lab for s in label_sets for lab in s], dtype=np.int64)


def test_iterative_stratification_multi_label():
    label_sets = [[0, 1]] * 40 + [[0]] * 100 + [[1, 2]] * 10 + [[2]] * 20 + [[3]] * 4 + [[]] * 6
    codes = iterative_stratification(*_csr(label_sets), 4, (0.7, 0.15, 0.15), seed=0)
    for lab, total in enumerate([140, 50, 30, 4]):
        got = collections.Counter(codes[i] for i, s in enumerate(label_sets) if lab in s)
        assert got[2] >= 1 and got[1] >= 1 and got[0] >= 1, lab
        assert abs(got[2] - 0.15 * total) <= max(1.5, 0.05 * total), (lab, got)
    assert collections.Counter(codes.tolist())[2] == pytest.approx(0.15 * len(label_sets), abs=2)
    assert codes.tolist() == iterative_stratification(*_csr(label_sets), 4, (0.7, 0.15, 0.15), seed=0).tolist()


def test_multi_label_jsonl_test_split_and_duplicates_share_a_split(tmp_path):
    f = tmp_path / "d.jsonl"
    lines = [{"text": f"a and b {i}", "labels": ["a", "b"]} for i in range(30)]
    lines += [{"text": f"c only {i}", "labels": ["c"]} for i in range(30)]
    lines += [{"text": "same text", "labels": ["a"]}, {"text": "same text", "labels": ["c"]}]
    f.write_text("".join(json.dumps(x) + "\n" for x in lines))
    pairs = list(iter_split(str(f), SplitSpec(0.2, 0.2, 5), label_column="labels"))
    test_labels = {lab for s, r in pairs if s == "test" for lab in r.labels}
    assert test_labels == {"a", "b", "c"}
    assert len({s for s, r in pairs if r.text == "same text"}) == 1


def test_explicit_validation_and_test_files_replace_their_share(tmp_path):
    train = _csv(tmp_path / "train.csv", [(f"t{i}", "ab"[i % 2]) for i in range(20)])
    val = _csv(tmp_path / "val.csv", [("v1", "a"), ("v2", "b")])
    test = _csv(tmp_path / "test.csv", [("x1", "a")])
    pairs = list(iter_split(train, SplitSpec(0.2, 0.1), validation_data=val, test_data=test, label_column="label"))
    assert [r.text for s, r in pairs if s == "train"] == [f"t{i}" for i in range(20)]
    assert [r.text for s, r in pairs if s == "validation"] == ["v1", "v2"]
    assert [(r.text, r.source) for s, r in pairs if s == "test"] == [("x1", test)]


# ------------------------------------------------------------------------------------- notebook split


def _trainer_split(root):
    from trainer.data import load_corpus

    c = load_corpus(root)
    return list(c.train_paths), [c.class_names[i] for i in c.train_labels], list(c.val_paths), \
        [c.class_names[i] for i in c.val_labels]


def _corpus_split(root):
    pairs = list(iter_split(str(root)))
    train = [r for s, r in pairs if s == "train"]
    val = [r for s, r in pairs if s == "validation"]
    return [r.id for r in train], [r.labels[0] for r in train], [r.id for r in val], [r.labels[0] for r in val]


def test_folder_split_equals_trainer_data_on_toy_corpus(tmp_path):
    root = write_toy_corpus(tmp_path / "bbc", docs_per_class=13)
    (root / "sport" / "extra").mkdir()
    (root / "sport" / "extra" / "001.TXT").write_text("nested football match")
    assert _corpus_split(tmp_path) == _trainer_split(tmp_path)  # the parent of bbc/ is accepted too


def test_notebook_split_too_few_documents(tmp_path):
    write_toy_corpus(tmp_path, docs_per_class=1)
    with pytest.raises(CorpusError, match="3 documents are too few for validation_split=0.2"):
        notebook_split(tmp_path)


@pytest.mark.bbc
@pytest.mark.skipif(not BBC_DIR.is_dir(), reason="BBC corpus not at ../shared/data/bbc")
def test_bbc_folder_split_equals_trainer_data_exactly():
    from trainer.data import load_corpus

    c = load_corpus(BBC_DIR)
    pairs = list(iter_split(str(BBC_DIR)))
    train = [r for s, r in pairs if s == "train"]
    val = [r for s, r in pairs if s == "validation"]
    assert (len(train), len(val)) == (1780, 445)
    assert [r.id for r in train] == list(c.train_paths) and [r.id for r in val] == list(c.val_paths)
    assert [r.labels[0] for r in train] == [c.class_names[i] for i in c.train_labels]
    # Texts: UTF-8, or Latin-1 where the bytes are not UTF-8 (sport/199.txt), as the serving graph repairs them.
    repaired = [r.text.encode("utf-8") for r in train + val]
    raw = list(c.train_texts + c.val_texts)
    assert sum(a != b for a, b in zip(repaired, raw, strict=True)) == len(c.invalid_utf8_paths) == 1
    assert all(a == b.decode("latin-1").encode() for a, b in zip(repaired, raw, strict=True) if a != b)


@pytest.mark.bbc
@pytest.mark.skipif(not BBC_DIR.is_dir(), reason="BBC corpus not at ../shared/data/bbc")
def test_bbc_to_csv_round_trip_gives_the_folders_split_and_texts(tmp_path):
    subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "bbc_to_csv.py"), str(BBC_DIR), str(tmp_path)],
                   check=True, capture_output=True)
    kw = {"text_columns": ["title", "body"], "label_column": "label"}
    folder = list(iter_split(str(BBC_DIR)))
    files = list(iter_split(str(tmp_path / "bbc-train.csv"), validation_data=str(tmp_path / "bbc-validation.csv"), **kw))
    names = dict(line.split("=") for line in (tmp_path / "bbc-label-names.txt").read_text().split())
    assert [(s, r.text, r.labels[0]) for s, r in folder] == [(s, r.text, names[r.labels[0]]) for s, r in files]
    multi = [r for r in iter_rows(str(tmp_path / "bbc-multilabel.jsonl"), label_column="labels") if isinstance(r, Row)]
    assert len(multi) >= 1100 and all(len(set(r.labels)) == 2 for r in multi)
