"""Tests for trainer/data.py: layout rules, the seeded split, fingerprint, and the safe download."""

from __future__ import annotations

import collections
import functools
import http.server
import io
import logging
import pathlib
import socket
import stat
import threading
import zipfile

import pytest

from trainer import data
from trainer.data import BBC_CLASS_COUNTS, DataError, load_corpus, resolve_data_dir

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
BBC_DIR = REPO_ROOT.parent / "shared" / "data" / "bbc"


def make_corpus(root: pathlib.Path, files: dict[str, bytes]) -> pathlib.Path:
    """Writes ``{relative path: bytes}`` under ``root`` (folders ending in '/' are created empty)."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        path = root / rel
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def small_corpus_files(n_per_class: int = 6, classes=("alpha", "beta", "gamma")) -> dict[str, bytes]:
    return {
        f"{c}/{i:03d}.txt": f"{c} document {i} ".encode() * (i + 1)
        for c in classes
        for i in range(n_per_class)
    }


# ------------------------------------------------------------------------------------------ layout


@pytest.mark.parametrize(
    "files, data_subdir, match",
    [
        ({}, "missing", "does not exist"),
        ({"a_file": b"x"}, "a_file", "is a file"),
        ({"empty/": b""}, "empty", "no class folders"),
        ({"d/README.TXT": b"x", "d/notes.txt": b"x"}, "d", "no class folders"),
        ({"d/only/001.txt": b"x", "d/only/002.txt": b"y"}, "d", "only one class folder .'only'."),
        ({"d/a/001.txt": b"x", "d/a/002.txt": b"x", "d/b/": b""}, "d", r"\['b'\].*hold no .txt"),
        ({"d/a/001.txt": b"x", "d/a/002.txt": b"x", "d/b/.DS_Store": b"x"}, "d", r"\['b'\].*hold no .txt"),
        ({"d/a/001.txt": b"x", "d/b/001.txt": b"y"}, "d", "too few for validation_split"),
    ],
    ids=["missing", "file", "empty-dir", "no-class-folders", "single-class", "empty-class",
         "class-with-only-stray", "too-few-docs"],
)
def test_load_corpus_rejects_bad_layouts(tmp_path, files, data_subdir, match):
    make_corpus(tmp_path, files)
    with pytest.raises(DataError, match=match) as err:
        load_corpus(tmp_path / data_subdir)
    assert "--data-dir" in str(err.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"validation_split": 0.0}, "validation_split"),
        ({"validation_split": 1.0}, "validation_split"),
        ({"seed": "42"}, "seed"),
        ({"max_train_docs": 0}, "max_train_docs"),
        ({"max_val_docs": -1}, "max_val_docs"),
        ({"max_val_docs": 2.5}, "max_val_docs"),
    ],
)
def test_load_corpus_rejects_bad_arguments(tmp_path, kwargs, match):
    root = make_corpus(tmp_path / "c", small_corpus_files())
    with pytest.raises(ValueError, match=match):
        load_corpus(root, **kwargs)


@pytest.mark.parametrize(
    "extra, data_subdir, expect_counts, expect_log",
    [
        # top-level README.TXT (as in the official zip) is not a document
        ({"bbc/README.TXT": b"readme"}, "bbc", {"alpha": 6, "beta": 6, "gamma": 6}, "top-level file"),
        # stray non-.txt files inside a class folder are ignored with a warning
        ({"bbc/alpha/.DS_Store": b"x", "bbc/beta/notes.md": b"x"}, "bbc",
         {"alpha": 6, "beta": 6, "gamma": 6}, "non-.txt file"),
        # the extension test is case-insensitive (tf_keras lowercases it): 100.TXT is a document
        ({"bbc/alpha/100.TXT": b"upper"}, "bbc", {"alpha": 7, "beta": 6, "gamma": 6}, None),
        # nested folders inside a class folder belong to that class (tf_keras walks recursively)
        ({"bbc/beta/sub/200.txt": b"nested"}, "bbc", {"alpha": 6, "beta": 7, "gamma": 6}, None),
        # hidden top-level folders are not classes
        ({"bbc/.git/x.txt": b"x"}, "bbc", {"alpha": 6, "beta": 6, "gamma": 6}, "hidden folder"),
        # the parent of a single bbc/ folder is accepted too
        ({"bbc/README.TXT": b"readme"}, ".", {"alpha": 6, "beta": 6, "gamma": 6}, None),
    ],
    ids=["readme", "stray-files", "uppercase-TXT", "nested", "hidden-dir", "parent-of-bbc"],
)
def test_load_corpus_documented_behaviours(tmp_path, caplog, extra, data_subdir, expect_counts, expect_log):
    files = {f"bbc/{k}": v for k, v in small_corpus_files().items()} | extra
    make_corpus(tmp_path, files)
    with caplog.at_level(logging.INFO, logger="trainer.data"):
        corpus = load_corpus(tmp_path / data_subdir)
    assert corpus.class_names == ("alpha", "beta", "gamma")
    totals = collections.Counter(corpus.class_counts("train")) + collections.Counter(corpus.class_counts("val"))
    assert dict(totals) == expect_counts
    if expect_log:
        assert expect_log in caplog.text
    assert all(pathlib.Path(p).name.lower().endswith(".txt") for p in corpus.train_paths + corpus.val_paths)


def test_resolve_data_dir_explicit(tmp_path):
    make_corpus(tmp_path, {f"bbc/{k}": v for k, v in small_corpus_files().items()})
    assert resolve_data_dir(tmp_path, cache_dir=tmp_path / "cache") == (tmp_path / "bbc").resolve()
    assert resolve_data_dir(tmp_path / "bbc", cache_dir=tmp_path / "cache") == (tmp_path / "bbc").resolve()
    with pytest.raises(DataError, match="does not exist"):
        resolve_data_dir(tmp_path / "nope", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # an explicit dir never touches the cache


# ------------------------------------------------------------------------------------------- split


def test_split_matches_tf_keras_text_dataset_from_directory(tmp_path):
    """Our split (with paths) must equal the notebook's public call, document for document."""
    import tf_keras

    root = make_corpus(tmp_path / "c", small_corpus_files(n_per_class=9))
    corpus = load_corpus(root)
    assert (len(corpus.train_texts), len(corpus.val_texts)) == (22, 5)  # int(0.2 * 27) = 5
    for subset, texts, labels in [
        ("training", corpus.train_texts, corpus.train_labels),
        ("validation", corpus.val_texts, corpus.val_labels),
    ]:
        ds = tf_keras.utils.text_dataset_from_directory(
            str(root), batch_size=None, validation_split=0.2, subset=subset, seed=42
        )
        expected = collections.Counter((x.numpy(), int(y)) for x, y in ds)
        assert collections.Counter(zip(texts, labels, strict=True)) == expected
        assert list(ds.class_names) == list(corpus.class_names)
    # texts/labels/paths stay aligned
    for text, label, path in zip(corpus.train_texts, corpus.train_labels, corpus.train_paths, strict=True):
        assert pathlib.Path(path).read_bytes() == text
        assert pathlib.Path(path).parent.name == corpus.class_names[label]


def test_seed_changes_split_and_max_docs_cut_after_split(tmp_path):
    root = make_corpus(tmp_path / "c", small_corpus_files(n_per_class=9))
    full = load_corpus(root)
    other = load_corpus(root, seed=7)
    assert set(full.val_paths) != set(other.val_paths)
    cut = load_corpus(root, max_train_docs=4, max_val_docs=2)
    assert cut.train_paths == full.train_paths[:4] and cut.val_paths == full.val_paths[:2]
    assert cut.train_labels == full.train_labels[:4] and cut.val_texts == full.val_texts[:2]
    assert sum(cut.class_counts("training").values()) == 4
    assert sum(cut.class_counts("validation").values()) == 2
    with pytest.raises(ValueError, match="split"):
        full.class_counts("test")


def test_invalid_utf8_is_kept_counted_and_logged(tmp_path, caplog):
    files = small_corpus_files()
    files["beta/bad.txt"] = b"price \xa3100 and \xff\xfe"
    root = make_corpus(tmp_path / "c", files)
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        corpus = load_corpus(root)
    bad = str((root / "beta" / "bad.txt").resolve())
    assert corpus.invalid_utf8_paths == (bad,)
    all_texts = dict(zip(corpus.train_paths + corpus.val_paths, corpus.train_texts + corpus.val_texts, strict=True))
    assert all_texts[bad] == b"price \xa3100 and \xff\xfe"
    assert "not valid UTF-8" in caplog.text and "bad.txt" in caplog.text


@pytest.mark.parametrize(
    "change, same",
    [
        (lambda root: None, True),
        (lambda root: (root / "alpha" / "zzz_extra.md").write_bytes(b"ignored"), True),
        (lambda root: (root / "alpha" / "003.txt").write_bytes(b"edited"), False),
        (lambda root: (root / "alpha" / "003.txt").rename(root / "alpha" / "103.txt"), False),
        (lambda root: (root / "alpha" / "003.txt").rename(root / "beta" / "003.txt"), False),
    ],
    ids=["unchanged", "stray-file", "edit-bytes", "rename", "move-class"],
)
def test_fingerprint(tmp_path, change, same):
    root = make_corpus(tmp_path / "c", small_corpus_files())
    before = load_corpus(root).fingerprint
    assert len(before) == 64
    change(root)
    assert (load_corpus(root).fingerprint == before) is same


def test_fingerprint_does_not_depend_on_location(tmp_path):
    a = make_corpus(tmp_path / "a", small_corpus_files())
    b = make_corpus(tmp_path / "elsewhere" / "b", small_corpus_files())
    assert load_corpus(a).fingerprint == load_corpus(b).fingerprint


# ---------------------------------------------------------------------------------------- download


@pytest.fixture
def http_dir(tmp_path):
    """Serves ``tmp_path/www`` on 127.0.0.1; yields (folder, base url)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def bbc_like_zip(counts=BBC_CLASS_COUNTS, extra: dict[str, bytes] | None = None, symlink: str | None = None,
                 stored: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bbc/README.TXT", b"Consists of 2225 documents from the BBC news website")
        for cls, n in counts.items():
            for i in range(1, n + 1):
                zf.writestr(f"bbc/{cls}/{i:03d}.txt", f"{cls} story {i}\n\nbody".encode())
        for name, content in (extra or {}).items():
            zf.writestr(name, content)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def corrupt_crc(blob: bytes) -> bytes:
    """Flips one byte of a stored member's data so only its CRC-32 check fails."""
    needle = b"business story 7\n\nbody"
    at = blob.index(needle)
    return blob[:at] + b"X" + blob[at + 1:]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/bbc-fulltext.zip"


def test_download_extracts_checks_and_caches(tmp_path, http_dir, caplog):
    www, base = http_dir
    (www / "bbc-fulltext.zip").write_bytes(bbc_like_zip())
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="trainer.data"):
        root = resolve_data_dir(None, cache, url=f"{base}/bbc-fulltext.zip")
    assert root == (cache / "data" / "bbc").resolve()
    assert sorted(p.name for p in root.iterdir()) == ["README.TXT", *sorted(BBC_CLASS_COUNTS)]
    assert {c: len(list((root / c).glob("*.txt"))) for c in BBC_CLASS_COUNTS} == BBC_CLASS_COUNTS
    assert sorted(p.name for p in (cache / "data").iterdir()) == ["bbc"]  # temp folder and zip are gone
    assert "checksum cannot be verified offline" in caplog.text
    # a second call uses the cache: the URL is now unreachable
    assert resolve_data_dir(None, cache, url=closed_port_url()) == root


@pytest.mark.parametrize(
    "make_blob, match",
    [
        (lambda: b"this is not a zip file" * 100, "not a valid zip"),
        (lambda: bbc_like_zip()[:5000], "not a valid zip"),
        (lambda: corrupt_crc(bbc_like_zip(stored=True)), "CRC-32"),
        (lambda: bbc_like_zip(extra={"bbc/../../evil.txt": b"x"}), "'..' path component"),
        (lambda: bbc_like_zip(extra={"/tmp/evil_abs.txt": b"x"}), "absolute path"),
        (lambda: bbc_like_zip(symlink="bbc/tech/link.txt"), "symbolic link"),
        (lambda: bbc_like_zip(counts=BBC_CLASS_COUNTS | {"tech": 400}), r"'tech': 400.*expected"),
        (lambda: bbc_like_zip(counts={"business": 3, "sport": 3}), "does not hold the BBC corpus"),
    ],
    ids=["garbage", "truncated", "bad-crc", "dotdot", "absolute", "symlink", "wrong-count", "wrong-classes"],
)
def test_download_rejects_bad_zips_and_leaves_nothing(tmp_path, http_dir, make_blob, match):
    www, base = http_dir
    (www / "bbc-fulltext.zip").write_bytes(make_blob())
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=match):
        resolve_data_dir(None, cache, url=f"{base}/bbc-fulltext.zip")
    assert list((cache / "data").iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("url_kind", ["closed-port", "404"])
def test_download_unreachable_says_how_to_provide_data(tmp_path, http_dir, url_kind):
    _, base = http_dir
    url = closed_port_url() if url_kind == "closed-port" else f"{base}/missing.zip"
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        resolve_data_dir(None, cache, url=url)
    msg = str(err.value)
    assert "--data-dir DIR" in msg and url in msg and str(cache / "data") in msg
    assert list((cache / "data").iterdir()) == []


def test_module_constants():
    assert data.BBC_URL == "http://mlg.ucd.ie/files/datasets/bbc-fulltext.zip"
    assert sum(BBC_CLASS_COUNTS.values()) == 2225


# --------------------------------------------------------------------------------------------- BBC


@pytest.mark.bbc
@pytest.mark.skipif(not BBC_DIR.is_dir(), reason=f"BBC corpus not found at {BBC_DIR}")
def test_bbc_corpus_split():
    import tf_keras

    corpus = load_corpus(BBC_DIR)
    assert corpus.class_names == tuple(sorted(BBC_CLASS_COUNTS))
    assert (len(corpus.train_texts), len(corpus.val_texts)) == (1780, 445)
    train, val = corpus.class_counts("train"), corpus.class_counts("validation")
    assert {c: train[c] + val[c] for c in corpus.class_names} == BBC_CLASS_COUNTS
    assert train == {"business": 419, "entertainment": 307, "politics": 329, "sport": 413, "tech": 312}
    assert val == {"business": 91, "entertainment": 79, "politics": 88, "sport": 98, "tech": 89}
    assert [pathlib.Path(p).relative_to(BBC_DIR.resolve()).as_posix() for p in corpus.invalid_utf8_paths] == [
        "sport/199.txt"
    ]
    ds = tf_keras.utils.text_dataset_from_directory(
        str(BBC_DIR), batch_size=None, validation_split=0.2, subset="validation", seed=42
    )
    assert collections.Counter((x.numpy(), int(y)) for x, y in ds) == collections.Counter(
        zip(corpus.val_texts, corpus.val_labels, strict=True)
    )
