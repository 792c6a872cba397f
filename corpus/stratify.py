"""Iterative stratification (Sechidis, Tsoumakas & Vlahavas, ECML PKDD 2011) into train/validation/test.

Hand-written (about 60 lines) rather than taken from ``iterative-stratification``: that package works on
a dense in-memory label matrix through scikit-learn's splitter API (pulling scikit-learn and SciPy into
the trainer image for one function), has had no release since 2024, and cannot guarantee a test row per
class. Here an example is a row key (64-bit hash of its text) with its label ids; memory is about
12 bytes plus 4 per label per distinct row (~20 MB for 10^6 rows), never the texts.

Single-label data does not need it: ``corpus.split.StratifiedSplit`` takes, per class, the rows with the
smallest text hashes for test and validation (``desired_per_label`` quotas), which needs only two
thresholds per class to assign a row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "validation", "test")


def desired_per_label(n: int, fractions: Sequence[float]) -> list[float]:
    """How many examples of a label each subset should get.

    Proportional to ``fractions`` (train, validation, test), except that a label with at least 2 examples
    gets at least one test example when a test share is asked for, and with at least 3 also one validation
    example, always keeping at least one for training: a class absent from test or validation cannot be
    scored there.
    """
    want = [n * f for f in fractions]
    for j in (2, 1):  # test first, then validation
        if fractions[j] > 0 and want[j] < 1 and n >= 1 + sum(1 for k in (1, 2) if fractions[k] > 0 and k >= j):
            want[0] -= 1 - want[j]
            want[j] = 1.0
    return want


def iterative_stratification(
    indptr: np.ndarray, indices: np.ndarray, n_labels: int, fractions: Sequence[float], seed: int
) -> np.ndarray:
    """Assigns every example to a subset so that each label is spread in the requested proportions.

    Args:
      indptr: int [N + 1], CSR row pointers: example i has labels ``indices[indptr[i]:indptr[i + 1]]``.
      indices: int [nnz], label ids in [0, n_labels), distinct within an example; an example may have none.
      n_labels: number of distinct labels.
      fractions: shares of (train, validation, test), summing to 1.
      seed: seeds the tie-breaks and the order in which a label's examples are placed.

    Returns:
      uint8 [N]: 0 train, 1 validation, 2 test per example.
    """
    indptr, indices = np.asarray(indptr, dtype=np.int64), np.asarray(indices, dtype=np.int64)
    n = indptr.size - 1
    rng = np.random.default_rng(seed)
    assigned = np.full(n, 255, dtype=np.uint8)
    owner = np.repeat(np.arange(n), np.diff(indptr))
    order = np.argsort(indices, kind="stable")
    bounds = np.searchsorted(indices[order], np.arange(n_labels + 1))
    by_label = [owner[order[bounds[lab]:bounds[lab + 1]]] for lab in range(n_labels)]
    ptr, idx = indptr.tolist(), indices.tolist()
    remaining = np.array([ex.size for ex in by_label], dtype=np.int64)
    want = [desired_per_label(int(ex.size), fractions) for ex in by_label]
    total = [n * f for f in fractions]
    k = len(fractions)
    while True:
        alive = np.flatnonzero(remaining > 0)
        if alive.size == 0:
            break
        lab = int(alive[np.argmin(remaining[alive])])  # the rarest label still unplaced
        for i in rng.permutation(by_label[lab]).tolist():
            if assigned[i] != 255:
                continue
            w = want[lab]
            best = max(w)
            ties = [j for j in range(k) if w[j] == best]
            if len(ties) > 1:
                top = max(total[j] for j in ties)
                ties = [j for j in ties if total[j] == top]
            j = ties[0] if len(ties) == 1 else int(ties[rng.integers(len(ties))])
            assigned[i] = j
            total[j] -= 1
            for other in idx[ptr[i]:ptr[i + 1]]:
                want[other][j] -= 1
                remaining[other] -= 1
    for i in np.flatnonzero(assigned == 255).tolist():  # examples without labels follow the overall shares
        j = int(np.argmax(total))
        assigned[i] = j
        total[j] -= 1
    return assigned
