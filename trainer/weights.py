"""`--class-weights balanced`: a loss weight per class id, from the training split's class counts.

The rule is corpus.report.balanced_class_weights (scikit-learn's "balanced", n / (k x count), k = the classes
that have training rows): every class then
carries the same total weight in an epoch, so a 5 % class is not learned as noise. Only the training split
counts; validation and test never shape training.

Multi-label: `count` is the rows that carry the label and `n` their sum (label assignments), and the weight
scales the label's *positive* term of the binary cross-entropy (`pos_weight`), so a rare label's few "yes" rows
weigh as much as a frequent label's; the "no" terms keep weight 1. The decision thresholds, tuned on validation
afterwards, absorb the shift this gives the probabilities.
"""

from __future__ import annotations

import logging
from collections import Counter

from corpus.report import balanced_class_weights

log = logging.getLogger(__name__)


def balanced(train_labels, num_classes: int) -> list[float]:
    """Per class id; a class without training rows gets 0 (it cannot be learned anyway).

    `train_labels`: class ids, or for a multi-label corpus a tuple of class ids per row.
    """
    counts = Counter(int(c) for label in train_labels
                     for c in (label if isinstance(label, (tuple, list)) else (label,)))
    by_id = balanced_class_weights({c: counts.get(c, 0) for c in range(num_classes)})
    return [by_id.get(c, 0.0) for c in range(num_classes)]


def by_name(cfg, corpus) -> dict[str, float] | None:
    """{class name: weight} as the run trains with them, or None when the loss is unweighted."""
    if cfg.class_weights == "none":
        return None
    values = balanced(corpus.train_labels, len(corpus.class_names))
    return {name: round(w, 6) for name, w in zip(corpus.class_names, values, strict=True)}


def for_config(cfg, corpus) -> list[float] | None:
    """The loss weights by class id (None: unweighted), logged once."""
    named = by_name(cfg, corpus)
    if named is None:
        return None
    log.info("class weights (%s): %s", cfg.class_weights, ", ".join(f"{n} {w:.3f}" for n, w in named.items()))
    return balanced(corpus.train_labels, len(corpus.class_names))
