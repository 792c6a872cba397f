"""Turning what the user typed (files, folders, globs) into a sorted list of files and a format.

Rules:

* a folder with visible sub-folders is a corpus of class folders (today's BBC layout); its documents are
  the ``.txt`` files (any letter case) under them, in the order ``tf_keras``' ``index_directory`` lists
  them (class folders sorted, then a sorted walk). A folder whose only visible sub-folder is ``bbc/``
  stands for that ``bbc/`` folder, as ``trainer.data`` accepts it;
* a folder without sub-folders stands for the data files directly in it (``.csv``, ``.tsv``, ``.jsonl``,
  ``.json``, ``.parquet``);
* anything else is a file path or a glob (``data/*.csv``, ``data/**/*.parquet``); several are allowed.

The result is sorted and de-duplicated so that row ids and hash splits never depend on shell order.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import os
import pathlib
from collections.abc import Sequence

from corpus.rows import CorpusError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
           ".parquet": "parquet", ".pq": "parquet"}
FOLDER = "folder"
BBC_FOLDER = "bbc"


def _as_list(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    out = [os.fspath(p) for p in paths]
    if not out:
        raise CorpusError("no data paths given; pass --data FILE, a glob or a folder")
    return out


def visible_subdirs(path: pathlib.Path) -> list[pathlib.Path]:
    """Sub-folders not starting with ``.``, sorted by name (their order gives the label ids)."""
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def class_root(path: str | os.PathLike) -> pathlib.Path | None:
    """The folder holding class folders if ``path`` is a class-folder corpus (or its ``bbc/`` parent), else None."""
    p = pathlib.Path(path)
    if not p.is_dir():
        return None
    subdirs = visible_subdirs(p)
    if len(subdirs) == 1 and subdirs[0].name == BBC_FOLDER and visible_subdirs(subdirs[0]):
        return subdirs[0].resolve()
    return p.resolve() if subdirs else None


def folder_documents(root: pathlib.Path) -> list[tuple[str, str]]:
    """``(path, class name)`` of every document under ``root``, in ``index_directory``'s order.

    The order is class folders sorted by name, then ``os.walk`` roots sorted, then file names sorted;
    documents are files ending in ``.txt`` in any letter case.
    """
    docs = []
    for sub in visible_subdirs(root):
        for dirpath, _, files in sorted(os.walk(sub), key=lambda x: x[0]):
            for name in sorted(files):
                if name.lower().endswith(".txt"):
                    docs.append((os.path.join(dirpath, name), sub.name))
    return docs


def open_binary(path: str):
    """The file's bytes, decompressed when it ends in ``.gz`` or ``.bz2`` (as pyarrow does for CSV)."""
    lower = path.lower()
    if lower.endswith(".gz"):
        return gzip.open(path, "rb")
    if lower.endswith(".bz2"):
        return bz2.open(path, "rb")
    return open(path, "rb")


def detect_format(path: str, file_format: str | None = None) -> str:
    """``csv``/``tsv``/``jsonl``/``parquet`` from ``file_format`` or the file's extension (``.gz`` allowed for text)."""
    if file_format is not None:
        fmt = file_format.lower().lstrip(".")
        fmt = {"json": "jsonl", "ndjson": "jsonl", "pq": "parquet"}.get(fmt, fmt)
        if fmt not in {"csv", "tsv", "jsonl", "parquet"}:
            raise CorpusError(f"unknown file format {file_format!r}; use csv, tsv, jsonl or parquet")
        return fmt
    name = path.lower()
    for suffix in (".gz", ".bz2"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    ext = os.path.splitext(name)[1]
    if ext not in FORMATS:
        raise CorpusError(
            f"{path}: cannot tell the format from the extension {ext or '(none)'!r}; "
            f"use one of {', '.join(sorted(FORMATS))} or pass the format explicitly"
        )
    return FORMATS[ext]


def expand_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Files named by ``paths``: globs and folders expanded, sorted, de-duplicated.

    Args:
      paths: one path/glob/folder or several.

    Returns:
      Sorted file paths. For a class-folder corpus, its ``.txt`` documents in ``index_directory`` order
      (which is not plain sorted order across nested folders).

    Raises:
      CorpusError: a path does not exist, or a glob/folder matches no file (the pattern is named).
    """
    items = _as_list(paths)
    files: set[str] = set()
    for item in items:
        root = class_root(item)
        if root is not None:
            if len(items) > 1:
                raise CorpusError(f"{item} is a folder of class folders; pass it alone, not with other paths")
            docs = [p for p, _ in folder_documents(root)]
            if not docs:
                raise CorpusError(f"{item}: no .txt documents in its class folders")
            return docs
        if os.path.isdir(item):
            found = [os.path.join(item, n) for n in os.listdir(item)
                     if os.path.isfile(os.path.join(item, n)) and os.path.splitext(n.lower())[1] in FORMATS]
            if not found:
                raise CorpusError(f"{item}: folder holds no class folders and no {'/'.join(sorted(FORMATS))} files")
            files.update(found)
        elif glob.has_magic(item):
            found = [p for p in glob.glob(item, recursive=True) if os.path.isfile(p)]
            if not found:
                raise CorpusError(f"{item}: the pattern matches no file")
            files.update(found)
        elif os.path.isfile(item):
            files.add(item)
        else:
            raise CorpusError(f"{item}: no such file or folder")
    return sorted(files)
