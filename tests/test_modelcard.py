"""The model card's honest numbers: accuracy without validation documents that leak from train, and the list of
misclassified documents."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainer.data import Corpus
from trainer.modelcard import confusion_matrix, validation_report


def _corpus() -> Corpus:
    train = (b"Arsenal won.", b"Shares fell.\nMore text.")
    val = (b"Shares fell.\nMore text.", b"\n  Election day \xa3 \n body", b"Goal!", b"Profit up")
    return Corpus(class_names=("business", "politics", "sport"), train_texts=train, train_labels=(2, 0),
                  train_paths=("t/1", "t/2"), val_texts=val, val_labels=(0, 1, 2, 0),
                  val_paths=("v/1", "v/2", "v/3", "v/4"), invalid_utf8_paths=(), fingerprint="x")


def test_leaked_documents_are_left_out_of_the_clean_accuracy():
    corpus = _corpus()
    assert corpus.val_in_train() == (True, False, False, False)
    report = validation_report(corpus, np.array([0, 2, 2, 1]))  # the leaked one right, two clean ones wrong
    assert report["val_docs_also_in_train"] == 1
    assert report["val_without_train_duplicates"] == {"docs": 3, "accuracy": pytest.approx(1 / 3)}
    assert report["val_errors"] == [
        {"path": "v/2", "first_line": "Election day \ufffd", "true": "politics", "predicted": "sport",
         "also_in_train": False},
        {"path": "v/4", "first_line": "Profit up", "true": "business", "predicted": "politics",
         "also_in_train": False},
    ]
    json.dumps(report)  # goes into model_card.json as it is


def test_confusion_matrix_counts_rows_true_columns_predicted():
    matrix = confusion_matrix([0, 0, 1, 2], [0, 1, 1, 1], 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
