"""Exact, normalized and near duplicates: keys per row, and a MinHash LSH index for the near ones.

Three levels, cheapest first:

* **exact**: the same text (64-bit BLAKE2b of the text);
* **normalized**: the same words after lower-casing and dropping punctuation and whitespace differences
  (a re-encoded or re-wrapped copy of the same article);
* **near**: estimated Jaccard similarity of word 5-shingle sets >= ``threshold`` (default 0.8), from a
  64-permutation MinHash signature and LSH with 16 bands of 4 (candidates above ~0.5 similarity are then
  checked on the full signature). Meant for corpora up to ``NEAR_MAX_ROWS`` rows: the index holds 256
  bytes per row plus the band buckets; above that the report says near duplicates were not searched.

The exact level is what ``trainer.data.Corpus.val_in_train`` measures (28 validation documents of the
BBC seed split are also in train); the normalized and near levels add copies that differ only in
formatting or in a few words.
"""

from __future__ import annotations

import hashlib
import re
import zlib

import numpy as np

NUM_PERM = 64
BANDS = 16
SHINGLE = 5
THRESHOLD = 0.8
NEAR_MAX_ROWS = 50_000
_PRIME = np.uint64(4294967311)  # smallest prime above 2**32
_rng = np.random.RandomState(1)
_A = _rng.randint(1, 1 << 31, size=NUM_PERM, dtype=np.int64).astype(np.uint64)[:, None]
_B = _rng.randint(0, 1 << 31, size=NUM_PERM, dtype=np.int64).astype(np.uint64)[:, None]
_BASE = np.uint64(1000003)
_WORD = re.compile(r"\w+")


def exact_key(text: str) -> int:
    """64-bit digest of the text as is."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def words(text: str) -> list[str]:
    """Lower-cased word tokens (Unicode ``\\w+``): what the normalized and near levels compare."""
    return _WORD.findall(text.lower())


def normalized_key(text: str) -> int:
    """64-bit digest of the text's words joined by single spaces."""
    return exact_key(" ".join(words(text)))


def _shingle_hashes(tokens: list[str]) -> np.ndarray:
    """uint64 [S] 32-bit hashes of the distinct word 5-shingles (the whole text when shorter)."""
    w = np.fromiter((zlib.crc32(t.encode()) for t in tokens), dtype=np.uint64, count=len(tokens))
    if w.size < SHINGLE:
        return np.array([zlib.crc32(" ".join(tokens).encode())], dtype=np.uint64)
    n = w.size - SHINGLE + 1
    h = np.zeros(n, dtype=np.uint64)
    for k in range(SHINGLE):  # polynomial rolling hash of 5 word hashes, wrapping mod 2**64
        h = h * _BASE + w[k:k + n]
    return np.unique((h ^ (h >> np.uint64(32))) & np.uint64(0xFFFFFFFF))


def minhash(text: str) -> np.ndarray:
    """uint32 [NUM_PERM] MinHash signature of the text's word 5-shingles."""
    x = _shingle_hashes(words(text))[None, :]
    return ((_A * x + _B) % _PRIME).min(axis=1).astype(np.uint32)


class NearIndex:
    """LSH buckets of MinHash signatures; ``query`` finds indexed rows at least ``threshold`` similar."""

    def __init__(self, threshold: float = THRESHOLD):
        self.threshold = threshold
        self._signatures: list[np.ndarray] = []
        self._buckets: dict[tuple[int, bytes], list[int]] = {}

    def __len__(self) -> int:
        return len(self._signatures)

    def add(self, signature: np.ndarray) -> int:
        """Indexes a signature; returns its index."""
        i = len(self._signatures)
        self._signatures.append(signature)
        for band, chunk in enumerate(np.split(signature, BANDS)):
            self._buckets.setdefault((band, chunk.tobytes()), []).append(i)
        return i

    def query(self, signature: np.ndarray) -> list[tuple[int, float]]:
        """``(index, estimated Jaccard)`` of indexed signatures at or above the threshold, best first."""
        candidates: set[int] = set()
        for band, chunk in enumerate(np.split(signature, BANDS)):
            candidates.update(self._buckets.get((band, chunk.tobytes()), ()))
        found = []
        for i in candidates:
            similarity = float(np.mean(self._signatures[i] == signature))
            if similarity >= self.threshold:
                found.append((i, similarity))
        return sorted(found, key=lambda t: -t[1])
