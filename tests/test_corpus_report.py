"""corpus.labels and corpus.report: label-set checks (every message asserted), label maps, class weights,
dropped rows, duplicates across splits (exact, normalized, near), --dedup and the lengths hook."""

from __future__ import annotations

import random
import re

import pytest

from corpus import BadRow, CorpusError, Row, iter_rows
from corpus.labels import LabelCounts, build_label_set, count_labels, parse_label_names
from corpus.neardup import NearIndex, minhash
from corpus.report import balanced_class_weights, build_report, dedup, format_report
from corpus.split import iter_split
from tests.conftest import BBC_DIR


def tally(*label_rows: tuple[str, ...]) -> LabelCounts:
    return count_labels(Row(f"f:{i}", "t", labels, "f") for i, labels in enumerate(label_rows, start=1))


# ------------------------------------------------------------------------------------------------ labels


def test_label_set_sorted_numerically_and_by_map(tmp_path):
    t = tally(("10",), ("2",), ("2",), ("10",), ("1",), ("1",))
    assert build_label_set(t).names == ("1", "2", "10")
    ls = build_label_set(t, label_names="10=Tech, 1=World,2=Sports")
    assert (ls.names, ls.values, ls.counts) == (("Tech", "World", "Sports"), ("10", "1", "2"), (2, 2, 2))
    assert ls.index("1") == 1 and ls.encode(["2", "10"]) == [0, 2]
    f = tmp_path / "names.txt"
    f.write_text("# value=name\n1=World\n\n2=Sports\n10=Tech\n")
    assert build_label_set(t, label_names=str(f)).names == ("World", "Sports", "Tech")
    assert build_label_set(tally(("b",), ("a",), ("b",), ("a",))).names == ("a", "b")


def test_multi_label_set():
    t = tally(("x", "y"), ("y",), ("x",), ("z", "x"), ("z",))
    ls = build_label_set(t, multi_label=True)
    assert (ls.names, ls.counts, ls.multi_label) == (("x", "y", "z"), (3, 2, 2), True)


@pytest.mark.parametrize(
    "rows, kw, message",
    [
        ([("a",)] * 5, {"column": "topic"},
         "news.csv: label column 'topic' has one distinct value ('a'); a classifier needs at least 2"),
        ([("a",)] * 5 + [("b",)], {"column": "topic"},
         "news.csv: 1 label(s) have fewer than --min-examples=2 rows ('b': 1); add rows, merge or drop those labels, "
         "or lower --min-examples"),
        ([("a",)] * 3 + [("b",)] * 3, {"min_examples": 4},
         "news.csv: 2 label(s) have fewer than --min-examples=4 rows ('a': 3, 'b': 3); add rows, merge or drop "
         "those labels, or lower --min-examples"),
        ([("1",), ("1",), ("2",), ("2",), ("3",), ("3",)], {"label_names": "1=World,2=Sports", "column": "y"},
         "news.csv: --label-names has no name for value(s) '3' found in label column 'y' (it maps '1', '2')"),
        ([("1",), ("1",), ("2",), ("2",)], {"label_names": "1=World,2=Sports,3=Tech"},
         "news.csv: 1 label(s) have fewer than --min-examples=2 rows ('Tech': 0); add rows, merge or drop those "
         "labels, or lower --min-examples"),
        ([("a", "b"), ("a",), ("b",)], {"column": "tags"},
         "news.csv: row f:1 has several labels (1 such rows); pass --multi-label to train a multi-label model"),
        ([("a",), ("a",), (), ("b",), ("b",)], {"column": "tags"},
         "news.csv: row f:3 has no label (1 such rows); give every row a label or pass --multi-label (where a row "
         "may have none)"),
        ([], {"column": "y"}, "news.csv: no labelled rows in label column 'y'"),
        ([("a",), ("b",)], {"min_examples": 0}, "--min-examples must be a positive int, got 0"),
    ],
)
def test_label_set_errors(rows, kw, message):
    with pytest.raises(CorpusError, match=f"^{re.escape(message)}$"):
        build_label_set(tally(*rows), where="news.csv", **kw)


@pytest.mark.parametrize(
    "spec, message",
    [("1=World,2", "--label-names: entry 2 ('2') is not value=name, e.g. 1=World"),
     ("1=World,1=Sports", "--label-names: value '1' is mapped twice"),
     ("1=World,2=World", "--label-names: name(s) 'World' are given to several values"),
     (" , ", "--label-names: no value=name entries")],
)
def test_label_names_errors(spec, message):
    with pytest.raises(CorpusError, match=f"^{re.escape(message)}$"):
        parse_label_names(spec)


def test_label_names_file_error_names_the_line(tmp_path):
    f = tmp_path / "names.txt"
    f.write_text("1=World\nSports\n")
    with pytest.raises(CorpusError, match=re.escape(f"{f}: line 2 ('Sports') is not value=name, e.g. 1=World")):
        parse_label_names(str(f))


def test_balanced_class_weights():
    w = balanced_class_weights({"a": 60, "b": 30, "c": 10, "gone": 0})
    assert w == pytest.approx({"a": 100 / 180, "b": 100 / 90, "c": 100 / 30})


# ------------------------------------------------------------------------------------------------ report


def _article(rng: random.Random, n: int = 120) -> str:
    return " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota",
                                "kappa", "lambda", "mu", "nu", "xi", "omicron", "pi"]) for _ in range(n)) + "."


def test_report_counts_drops_classes_duplicates_and_dedup():
    rng = random.Random(0)
    base = [_article(rng) for _ in range(8)]
    near = base[2].split()
    near[60] = "CHANGED"
    pairs = [("train", Row(f"t{i}", text, ("a" if i % 3 else "b",), "f")) for i, text in enumerate(base[:6])]
    pairs += [
        ("train", Row("t-copy", base[0], ("a",), "f")),                      # a train-train copy
        ("validation", Row("v-exact", base[1], ("a",), "f")),                # exact copy of train
        ("validation", Row("v-norm", base[3].upper().replace(" ", "  "), ("b",), "f")),  # case/space only
        ("validation", Row("v-near", " ".join(near), ("a",), "f")),          # one word changed
        ("validation", Row("v-new", base[6], ("a",), "f")),
        ("test", Row("x-in-val", base[6], ("a",), "f")),                     # duplicates validation
        ("test", Row("x-new", base[7], ("b",), "f")),
        ("dropped", BadRow("f:9", "f", "row 9: empty text (column(s) 'text')")),
        ("dropped", BadRow("f:12", "f", "row 12: empty text (column(s) 'text')")),
        ("dropped", BadRow("g:4", "g", "line 4: invalid JSON (Expecting value, byte offset 77)")),
    ]
    report = build_report(pairs)
    r = report.finish()
    assert r["rows_read"] == 16 and r["rows"] == {"train": 7, "validation": 4, "test": 2} and r["dropped"] == 3
    assert r["dropped_reasons"] == {"empty text (column(s) 'text')": 2,
                                    "invalid JSON (Expecting value, byte offset 77)": 1}
    assert r["dropped_examples"][2] == {"id": "g:4", "reason": "line 4: invalid JSON (Expecting value, byte offset 77)"}
    assert r["class_counts"]["train"] == {"a": 5, "b": 2} and r["imbalance_ratio"] == 2.5
    d = r["duplicates"]
    assert d["extra_copies"] == 3  # t-copy, v-exact, x-in-val
    assert (d["validation_exact_in_train"], d["validation_normalized_in_train"], d["validation_near_in_train"],
            d["validation_any_in_train"]) == (1, 2, 3, 3)  # the normalized copy is near as well
    assert d["test_exact_in_train_or_validation"] == 1
    assert report.cross_split_duplicate_ids() == {"v-exact", "v-norm", "v-near", "x-in-val"}
    kept = [row.id for _, row in dedup(pairs, report.cross_split_duplicate_ids()) if isinstance(row, Row)]
    assert kept == ["t0", "t1", "t2", "t3", "t4", "t5", "t-copy", "v-new", "x-new"]
    text = format_report(r)
    assert "dropped 2: empty text (column(s) 'text')" in text and "imbalance ratio 2.5" in text


def test_near_index_similarity_threshold():
    rng = random.Random(1)
    a = _article(rng, 200)
    words = a.split()
    index = NearIndex(0.8)
    index.add(minhash(a))
    few = words[:]
    few[100] = "X"
    many = [w if i % 4 else "Y" for i, w in enumerate(words)]
    assert index.query(minhash(" ".join(few)))[0][1] >= 0.8
    assert index.query(minhash(" ".join(many))) == []
    assert index.query(minhash(_article(rng, 200))) == []


def test_lengths_hook_fingerprint_and_size_limit():
    rows = [("train", Row(f"r{i}", "w " * (i + 1), ("a",), "f")) for i in range(10)]
    words = build_report(rows).finish()
    assert words["length_unit"] == "whitespace_words" and words["lengths"]["train"]["max"] == 10
    seen = []
    hooked = build_report(rows, lengths_fn=lambda texts: seen.extend(texts) or [len(t) for t in texts]).finish()
    assert hooked["length_unit"] == "word_pieces" and hooked["lengths"]["all"]["max"] == 20 and len(seen) == 10
    assert build_report(list(reversed(rows))).finish()["fingerprint"] == words["fingerprint"]
    changed = rows[:-1] + [("train", Row("r9", "other", ("a",), "f"))]
    assert build_report(changed).finish()["fingerprint"] != words["fingerprint"]
    capped = build_report(rows, near_max_rows=5).finish()["duplicates"]
    assert capped["near_duplicates_searched"] is False and capped["validation_near_in_train"] is None
    with pytest.raises(ValueError, match="lengths_fn returned 1 lengths for 10 texts"):
        build_report(rows, lengths_fn=lambda texts: [1]).finish()


def test_report_on_a_file_split(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "a b c", "y": "p"}\n{"text": "", "y": "q"}\nnot json\n{"text": "d e", "y": "q"}\n')
    r = build_report(iter_split(str(f), label_column="y")).finish()
    assert r["rows_read"] == 4 and r["dropped"] == 2
    assert {e["id"] for e in r["dropped_examples"]} == {f"{f}:2", f"{f}:3"}
    assert count_labels(iter_rows(str(f), label_column="y")).counts == {"p": 1, "q": 1}


@pytest.mark.bbc
@pytest.mark.skipif(not BBC_DIR.is_dir(), reason="BBC corpus not at ../shared/data/bbc")
def test_bbc_report_finds_the_28_leaked_validation_docs():
    report = build_report(iter_split(str(BBC_DIR)), near_duplicates=False)  # near: ~3 s more, see the toy test
    d = report.finish()["duplicates"]
    assert d["validation_exact_in_train"] == 28 and d["extra_copies"] == 98
    assert d["validation_any_in_train"] == d["validation_normalized_in_train"] >= 28
    assert len(report.cross_split_duplicate_ids()) == d["validation_any_in_train"]
