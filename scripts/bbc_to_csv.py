"""Writes the BBC class-folder corpus as tables, for the own-corpus paths of issue 19.

    python scripts/bbc_to_csv.py ../shared/data/bbc OUT_DIR [--seed 42]

Writes into OUT_DIR:

* ``bbc.csv``: ``id,title,body,label`` with integer labels 1..5 (class folders in sorted order); title is a
  file's first line, body the rest after the blank line, so ``--text-column title --text-column body``
  gives back each file's text exactly (``corpus.readers`` joins with a blank line);
* ``bbc-label-names.txt``: ``1=business`` ... (``--label-names OUT_DIR/bbc-label-names.txt``);
* ``bbc-train.csv`` / ``bbc-validation.csv``: the same rows split and ordered as the seed notebook's split
  (``--data bbc-train.csv --validation-data bbc-validation.csv`` trains on exactly the folders' split);
* ``bbc-multilabel.jsonl``: ``{"id", "text", "labels": [a, b]}``, articles joined in pairs from different
  classes (shuffled with ``--seed``), each row labelled with both classes: a multi-label corpus.

The one Latin-1 file (``sport/199.txt``) is written as UTF-8 text, as the serving graph repairs it.
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from corpus.paths import class_root  # noqa: E402
from corpus.readers import iter_rows  # noqa: E402
from corpus.rows import Row  # noqa: E402
from corpus.split import notebook_split  # noqa: E402


def _title_body(text: str) -> tuple[str, str]:
    title, sep, body = text.partition("\n\n")
    return (title, body) if sep and body else (text, "")


def _write_csv(path: pathlib.Path, rows: list[Row], root: pathlib.Path, label_ids: dict[str, int]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "title", "body", "label"])
        for row in rows:
            title, body = _title_body(row.text)
            w.writerow([pathlib.Path(row.id).relative_to(root).as_posix(), title, body, label_ids[row.labels[0]]])


def _pairs(rows: list[Row], seed: int) -> list[tuple[Row, Row]]:
    """Each article used at most once, paired with the next unused article of another class."""
    order = np.random.default_rng(seed).permutation(len(rows)).tolist()
    waiting: list[Row] = []
    pairs = []
    for i in order:
        row = rows[i]
        partner = next((w for w in waiting if w.labels[0] != row.labels[0]), None)
        if partner is None:
            waiting.append(row)
        else:
            waiting.remove(partner)
            pairs.append((partner, row))
    return pairs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_dir")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=42, help="seed of the notebook split and of the pairing")
    args = p.parse_args()
    root = class_root(args.data_dir)
    if root is None:
        sys.exit(f"{args.data_dir}: not a folder of class folders")
    out = pathlib.Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for r in iter_rows(str(root)) if isinstance(r, Row)]
    classes = sorted({r.labels[0] for r in rows})
    label_ids = {c: i + 1 for i, c in enumerate(classes)}
    by_path = {r.id: r for r in rows}
    _write_csv(out / "bbc.csv", rows, root, label_ids)
    (out / "bbc-label-names.txt").write_text("".join(f"{i}={c}\n" for c, i in label_ids.items()))
    split = notebook_split(root, seed=args.seed)
    for name in ("train", "validation"):
        _write_csv(out / f"bbc-{name}.csv", [by_path[path] for path, _ in split[name] if path in by_path],
                   root, label_ids)
    pairs = _pairs(rows, args.seed)
    with open(out / "bbc-multilabel.jsonl", "w", encoding="utf-8") as f:
        for a, b in pairs:
            ids = [pathlib.Path(r.id).relative_to(root).as_posix() for r in (a, b)]
            f.write(json.dumps({"id": "+".join(ids), "text": a.text + "\n\n" + b.text,
                                "labels": sorted([a.labels[0], b.labels[0]])}) + "\n")
    print(f"wrote {len(rows)} rows ({len(classes)} classes) and {len(pairs)} multi-label pairs to {out}")


if __name__ == "__main__":
    main()
