"""Writes a generated news-like CSV for the memory/throughput benchmark (1,000,000 rows, ~1 GB by default).

    python scripts/make_big_csv.py /tmp/bertbc-big.csv [--rows 1000000] [--seed 0]

Columns ``id,title,body,label``: 20 topic labels as strings with a Zipf-like imbalance (the largest
~20x the smallest), each topic with its own keywords mixed into shared filler sentences, so a model can
learn it. Bodies hold commas, doubled quotes and newlines inside quoted fields (RFC 4180), so the
benchmark exercises the same quoting paths as real exports. Deterministic for a seed; about 30 s here.
Keep the file out of the repository (it is ~1 GB): /tmp is the place.
"""

from __future__ import annotations

import argparse
import csv
import os
import time

import numpy as np

TOPICS = [f"topic_{i:02d}" for i in range(20)]
FILLER = ("the a of and in to said was on for with new year people government market company team "
          "minister game film music technology bank shares election players police report officials "
          "week month says after over could would more than first last").split()
CHUNK = 50_000


def _sentence_pool(rng: np.random.Generator, n: int) -> list[str]:
    out = []
    for i in range(n):
        words = rng.choice(FILLER, size=int(rng.integers(10, 22))).tolist()
        if i % 7 == 0:
            words.insert(len(words) // 2, '"quoted,"')  # comma and quotes inside a quoted field
        sentence = " ".join(words)
        out.append(sentence[0].upper() + sentence[1:] + ("," if i % 5 == 0 else "."))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sentences-per-body", type=int, default=9)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    pool = _sentence_pool(rng, 4096)
    keywords = [[f"{t}_kw{j}" for j in range(8)] for t in TOPICS]
    share = 1.0 / np.arange(1, len(TOPICS) + 1) ** 1.0
    share /= share.sum()
    t0 = time.perf_counter()
    with open(args.out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "title", "body", "label"])
        for start in range(0, args.rows, CHUNK):
            n = min(CHUNK, args.rows - start)
            labels = rng.choice(len(TOPICS), size=n, p=share)
            sentences = rng.integers(0, len(pool), size=(n, args.sentences_per_body + 1))
            kws = rng.integers(0, 8, size=(n, 3))
            rows = []
            for i in range(n):
                s = sentences[i].tolist()
                kw = keywords[labels[i]]
                title = f"{kw[kws[i, 0]]} {pool[s[0]][:60]}"
                body = " ".join(pool[j] for j in s[1:5]) + f" {kw[kws[i, 1]]}\n\n" + \
                    " ".join(pool[j] for j in s[5:]) + f" {kw[kws[i, 2]]}."
                rows.append((start + i + 1, title, body, TOPICS[labels[i]]))
            w.writerows(rows)
    size = os.path.getsize(args.out)
    print(f"wrote {args.rows} rows, {size / 1e9:.2f} GB to {args.out} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
