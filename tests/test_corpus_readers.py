"""corpus readers: every format, every quoting edge case, globs, multi-label, and every file-level error."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus import BadRow, CorpusError, Row, expand_paths, iter_rows
from corpus.readers import join_text, label_values
from tests.conftest import REPO_ROOT


def rows_of(path, **kw) -> list:
    return list(iter_rows(str(path), **kw))


def write(path, data: str | bytes):
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


# ------------------------------------------------------------------------------------------------ CSV/TSV


def test_csv_columns_joined_labels_and_row_ids(tmp_path):
    f = write(tmp_path / "news.csv", "title,body,topic\nHello,World body.,3\nSecond,Two.,World\n")
    rows = rows_of(f, text_columns=["title", "body"], label_column="topic")
    assert rows == [
        Row(f"{f}:1", "Hello\n\nWorld body.", ("3",), str(f)),
        Row(f"{f}:2", "Second\n\nTwo.", ("World",), str(f)),
    ]


@pytest.mark.parametrize(
    "name, data, kw, text, label",
    [
        ("quoted newline", 'text,label\n"line one\nline two",a\n', {}, "line one\nline two", "a"),
        ("doubled quotes", 'text,label\n"she said ""hi"", then left",a\n', {}, 'she said "hi", then left', "a"),
        ("crlf line ends", "text,label\r\nplain,a\r\n", {}, "plain", "a"),
        ("utf-8 bom", "\ufefftext,label\ncafé,a\n", {}, "café", "a"),
        ("latin-1", "text,label\ncafé £5,a\n".encode("latin-1"), {"encoding": "latin-1"}, "café £5", "a"),
        ("integer label kept as written", "text,label\nx,07\n", {}, "x", "07"),
    ],
)
def test_csv_quoting_and_encodings(tmp_path, name, data, kw, text, label):
    f = write(tmp_path / "d.csv", data)
    (row,) = rows_of(f, label_column="label", **kw)
    assert (row.text, row.labels) == (text, (label,)), name


def test_tsv_with_quoted_tab_and_format_override(tmp_path):
    data = 'text\tlabel\n"a\tb"\tx\nplain\ty\n'
    tsv = write(tmp_path / "d.tsv", data)
    assert [(r.text, r.labels) for r in rows_of(tsv, label_column="label")] == [("a\tb", ("x",)), ("plain", ("y",))]
    odd = write(tmp_path / "d.txt", data)
    assert len(rows_of(odd, label_column="label", file_format="tsv")) == 2


def test_csv_streams_in_small_blocks(tmp_path):
    from corpus import csv_reader

    lines = "".join(f'"row {i}\nsecond line",{i % 3}\n' for i in range(500))
    f = write(tmp_path / "d.csv", "text,label\n" + lines)
    got = list(csv_reader.iter_records(str(f), ["text", "label"], block_size=256))
    assert [n for n, _ in got] == list(range(1, 501))
    assert got[499][1] == ("row 499\nsecond line", "1")
    long = write(tmp_path / "long.csv", "text,label\nshort,a\n" + f'"{"word " * 400}",b\n' + "after,c\n")
    got = list(csv_reader.iter_records(str(long), ["text", "label"], block_size=256))  # record > block: grown
    assert [(n, v[1]) for n, v in got] == [(1, "a"), (2, "b"), (3, "c")] and len(got[1][1][0]) == 2000


def test_csv_multi_label_with_separator(tmp_path):
    f = write(tmp_path / "d.csv", "text,tags\na,World|Sports\nb, Tech | \nc,\n")
    rows = rows_of(f, label_column="tags", label_separator="|")
    assert [r.labels for r in rows[:2]] == [("World", "Sports"), ("Tech",)]
    assert rows[2] == BadRow(f"{f}:3", str(f), "row 3: missing label (column 'tags')")


def test_bad_rows_empty_text_missing_label_and_id_column(tmp_path):
    f = write(tmp_path / "d.csv", "id,title,body,label\nA1,t,b,x\nA2,,  ,x\nA3,t,b,\n,t,b,x\n")
    rows = rows_of(f, text_columns=["title", "body"], label_column="label", id_column="id")
    assert rows[0] == Row("A1", "t\n\nb", ("x",), str(f))
    assert rows[1] == BadRow("A2", str(f), "row 2: empty text (column(s) 'title', 'body')")
    assert rows[2] == BadRow("A3", str(f), "row 3: missing label (column 'label')")
    assert rows[3] == BadRow(f"{f}:4", str(f), "row 4: missing id (column 'id')")


def test_no_label_column_gives_empty_labels(tmp_path):
    f = write(tmp_path / "d.csv", "text\nhello\n")
    assert rows_of(f)[0].labels == ()


# ---------------------------------------------------------------------------------------------- JSON lines


def test_jsonl_types_multi_label_blank_and_bad_lines(tmp_path):
    lines = [
        json.dumps({"text": "one", "label": 1}),
        "",
        json.dumps({"text": "two", "label": ["World", "Sports"]}),
        '{"text": "broken", ',
        "[1, 2]",
        json.dumps({"text": "three", "label": 2.0}),
        json.dumps({"text": "four", "label": []}),
        json.dumps({"text": "five", "label": None}),
    ]
    f = write(tmp_path / "d.jsonl", "\n".join(lines) + "\n")
    rows = rows_of(f, label_column="label")
    assert rows[0] == Row(f"{f}:1", "one", ("1",), str(f))
    assert rows[1].labels == ("World", "Sports")
    offset = len("\n".join(lines[:3]).encode()) + 1
    assert rows[2] == BadRow(f"{f}:4", str(f), f"line 4: invalid JSON (Expecting property name enclosed in double "
                                                f"quotes, byte offset {offset + len(lines[3])})")
    assert rows[3].reason == f"line 5: a JSON list, not an object (byte offset {offset + len(lines[3]) + 1})"
    assert rows[4].labels == ("2",)
    assert rows[5].labels == ()
    assert rows[6].reason == "row 8: missing label (column 'label')"


def test_gzipped_jsonl_and_csv(tmp_path):
    import gzip

    for name, data in (("d.jsonl.gz", '{"text": "a", "y": 1}\n'), ("d.csv.gz", "text,y\na,1\n")):
        f = tmp_path / name
        f.write_bytes(gzip.compress(data.encode()))
        assert [(r.text, r.labels) for r in rows_of(f, label_column="y")] == [("a", ("1",))], name


def test_json_array_file(tmp_path):
    f = write(tmp_path / "gold.json", json.dumps([{"text": "a", "y": "x"}, {"text": "b", "y": "z"}]))
    assert [(r.id, r.labels) for r in rows_of(f, label_column="y")] == [(f"{f}:1", ("x",)), (f"{f}:2", ("z",))]


# ------------------------------------------------------------------------------------------------ Parquet


def test_parquet_list_labels_ints_and_nulls(tmp_path):
    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"title": ["a", "b", "c"], "body": ["x", None, "z"],
                             "tags": [["World", "Sports"], ["Tech"], None], "n": [1, 2, 3]}), f, row_group_size=2)
    rows = rows_of(f, text_columns=["title", "body"], label_column="tags")
    assert rows[0] == Row(f"{f}:1", "a\n\nx", ("World", "Sports"), str(f))
    assert rows[1].text == "b" and rows[1].labels == ("Tech",)
    assert rows[2].reason == "row 3: missing label (column 'tags')"
    assert [r.labels for r in rows_of(f, text_columns=["title"], label_column="n")] == [("1",), ("2",), ("3",)]


# --------------------------------------------------------------------------------------- paths and folders


def test_globs_several_paths_and_folders_are_sorted(tmp_path):
    for name in ("b.csv", "a.csv", "c.jsonl"):
        write(tmp_path / name, "text\nx\n" if name.endswith("csv") else '{"text": "x"}\n')
    expected = [str(tmp_path / n) for n in ("a.csv", "b.csv", "c.jsonl")]
    assert expand_paths(str(tmp_path / "*.*")) == expected
    assert expand_paths([str(tmp_path / "c.jsonl"), str(tmp_path / "?.csv")]) == expected
    assert expand_paths(tmp_path) == expected
    assert [r.source for r in iter_rows([str(tmp_path / "b.csv"), str(tmp_path / "a.csv")])] == expected[:2]


def test_class_folders_label_id_repair_and_order(tmp_path):
    (tmp_path / "b" / "nested").mkdir(parents=True)
    (tmp_path / "a").mkdir()
    write(tmp_path / "a" / "2.txt", "two")
    write(tmp_path / "a" / "1.TXT", "one")
    write(tmp_path / "a" / "notes.md", "ignored")
    write(tmp_path / "b" / "nested" / "0.txt", "nested")
    write(tmp_path / "b" / "9.txt", "caf\xe9".encode("latin-1"))
    write(tmp_path / "README.TXT", "top-level files are ignored")
    rows = rows_of(tmp_path, text_columns=["ignored"], label_column="ignored")
    assert [(r.id, r.text, r.labels) for r in rows] == [
        (str(tmp_path / "a" / "1.TXT"), "one", ("a",)),
        (str(tmp_path / "a" / "2.txt"), "two", ("a",)),
        (str(tmp_path / "b" / "9.txt"), "café", ("b",)),
        (str(tmp_path / "b" / "nested" / "0.txt"), "nested", ("b",)),
    ]


@pytest.mark.parametrize(
    "value, sep, expected",
    [(3, None, ("3",)), (3.0, None, ("3",)), (" x ", None, ("x",)), ("", None, None), (None, None, None),
     ("a|b", "|", ("a", "b")), (["a", 2], None, ("a", "2")), ([], None, ()), (True, None, ("true",))],
)
def test_label_values(value, sep, expected):
    assert label_values(value, sep) == expected


def test_join_text_skips_empty_values():
    assert join_text(["Title", None, "", "Body"]) == "Title\n\nBody"


# ----------------------------------------------------------------------------------------------- errors


def _error(tmp_path, name: str, data: str | bytes, **kw) -> str:
    f = write(tmp_path / name, data)
    with pytest.raises(CorpusError) as e:
        list(iter_rows(str(f), **kw))
    message = str(e.value)
    assert "\n" not in message
    return message.replace(str(f), name)


@pytest.mark.parametrize(
    "name, data, kw, expected",
    [
        ("d.csv", "title,body\nx,y\n", {"label_column": "label"},
         "d.csv: unknown column(s) 'text', 'label'; the file has columns 'title', 'body'"),
        ("d.csv", "", {}, "d.csv: empty file"),
        ("d.csv", "text,label\n", {"label_column": "label"}, "d.csv: empty file (a header but no data rows)"),
        ("d.csv", b"text,label\nok,a\ncaf\xe9,b\n", {"label_column": "label"},
         "d.csv: line 3, byte offset 19: bytes that are not valid utf-8; pass the file's encoding (e.g. --encoding latin-1)"),
        ("d.csv", 'text,label\n"multi\nline",a\nx,y,z\n', {"label_column": "label"},
         "d.csv: row 2 (line 4, byte offset 26) has 3 fields, the header has 2; quote fields that contain the "
         "delimiter or newlines"),
        ("d.jsonl", '{"title": "x"}\n', {}, "d.jsonl: unknown column(s) 'text'; line 1 has keys 'title'"),
        ("d.jsonl", "\n\n", {}, "d.jsonl: empty file"),
        ("d.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', {},
         "d.jsonl: line 2, byte offset 28: bytes that are not valid utf-8; pass the file's encoding (e.g. --encoding latin-1)"),
        ("d.xlsx", "x", {}, "d.xlsx: cannot tell the format from the extension '.xlsx'; use one of .csv, .json, "
         ".jsonl, .ndjson, .parquet, .pq, .tsv or pass the format explicitly"),
        ("d.csv", "text\nx\n", {"text_columns": ["text"], "label_column": "text"},
         "column 'text' cannot be both a text column and the label column"),
        ("d.parquet", b"not parquet at all", {}, None),
    ],
)
def test_file_errors_are_one_line(tmp_path, name, data, kw, expected):
    message = _error(tmp_path, name, data, **kw)
    if expected is None:
        assert message.startswith(f"{name}: cannot be read as Parquet: ")
    else:
        assert message == expected


def test_parquet_unknown_column_and_empty(tmp_path):
    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"body": ["x"]}), f)
    with pytest.raises(CorpusError, match=r"d.parquet: unknown column\(s\) 'text'; the file has columns 'body'$"):
        list(iter_rows(str(f)))
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), f)
    with pytest.raises(CorpusError, match=r"d.parquet: empty file \(no rows\)$"):
        list(iter_rows(str(f)))


def test_path_errors_name_the_pattern(tmp_path):
    with pytest.raises(CorpusError, match=r"nope/\*.csv: the pattern matches no file$"):
        expand_paths(str(tmp_path / "nope" / "*.csv"))
    with pytest.raises(CorpusError, match=r"missing.csv: no such file or folder$"):
        expand_paths(str(tmp_path / "missing.csv"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="folder holds no class folders and no"):
        expand_paths(str(tmp_path / "empty"))


def test_corpus_imports_no_tensorflow_and_no_other_package():
    import subprocess
    import sys

    code = ("import sys, corpus, corpus.split, corpus.labels, corpus.report; "
            "bad = [m for m in sys.modules if m.split('.')[0] in {'tensorflow', 'trainer', 'serving', 'batch'}]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(REPO_ROOT))
    assert out.stdout.strip() == "[]"
