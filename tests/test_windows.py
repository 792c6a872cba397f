"""Long-document windows: table-driven checks of where the windows start and what they hold."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from trainer.windows import mean_over_windows, split_windows


def _docs(*lengths: int) -> tf.RaggedTensor:
    """Document d holds the word pieces d*1000 + 0 .. d*1000 + length - 1, so a window names its positions."""
    return tf.ragged.constant([[d * 1000 + i for i in range(n)] for d, n in enumerate(lengths)], dtype=tf.int64,
                              ragged_rank=1) if lengths else tf.RaggedTensor.from_row_lengths(
        tf.zeros([0], tf.int64), tf.zeros([0], tf.int64))


@pytest.mark.parametrize("lengths, budget, overlap, max_windows, expected_starts", [
    ((5,), 8, 2, 4, [[0]]),                  # shorter than a window: one window, the whole document
    ((8,), 8, 2, 4, [[0]]),                  # exactly one window
    ((14,), 8, 2, 4, [[0, 6]]),              # stride 6: two windows, the second ends at the end
    ((15,), 8, 2, 4, [[0, 4, 7]]),           # 1 + ceil(7/6) = 3 windows spread over 0..7
    ((100,), 8, 2, 4, [[0, 31, 61, 92]]),    # capped at 4: spread out, first = head, last = tail
    ((0, 20), 8, 0, 3, [[0], [0, 6, 12]]),   # empty document: one empty window
    ((30,), 8, 2, 1, [[0]]),                 # max_windows 1 = head truncation
])
def test_window_starts_and_contents(lengths, budget, overlap, max_windows, expected_starts):
    windows, doc_index = split_windows(_docs(*lengths), budget=budget, overlap=overlap, max_windows=max_windows)
    rows = windows.to_list()
    assert doc_index.numpy().tolist() == [d for d, starts in enumerate(expected_starts) for _ in starts]
    got = []
    for d, starts in enumerate(expected_starts):
        for s in starts:
            row = rows[len(got)]
            want = [d * 1000 + i for i in range(s, min(s + budget, lengths[d]))]
            assert row == want, (d, s, row)
            got.append(row)
    assert len(rows) == len(got)


def test_consecutive_windows_overlap_at_least_as_asked_when_not_capped():
    windows, doc_index = split_windows(_docs(1000), budget=254, overlap=64, max_windows=100)
    rows = windows.to_list()
    for a, b in zip(rows, rows[1:], strict=False):
        assert len(set(a) & set(b)) >= 64
    assert rows[0][0] == 0 and rows[-1][-1] == 999


@pytest.mark.parametrize("budget, overlap, max_windows", [(0, 0, 1), (8, 8, 1), (8, -1, 1), (8, 2, 0)])
def test_bad_window_settings_are_refused(budget, overlap, max_windows):
    with pytest.raises(ValueError, match="budget"):
        split_windows(_docs(3), budget=budget, overlap=overlap, max_windows=max_windows)


def test_mean_over_windows():
    logits = tf.constant([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    out = mean_over_windows(logits, tf.constant([0, 0, 1]), tf.constant(2))
    np.testing.assert_allclose(out.numpy(), [[2.0, 1.0], [5.0, 5.0]])


def test_validation_scores_documents_as_the_export_serves_them(tiny_encoder, toy_corpus_dir):
    """The trainer's validation (windows classified in batches that mix documents, logits averaged per document
    on the host) must give the exported serving graph's probabilities, so the checkpoint it picks is the best
    served model. The head-only export is the control: with several windows per document it must differ."""
    from trainer.data import load_corpus
    from trainer.export import ServingModule
    from trainer.loop import evaluate, make_steps
    from trainer.model import build_classifier
    from trainer.pipeline import make_eval_dataset
    from trainer.preprocessing import Preprocessor

    corpus = load_corpus(toy_corpus_dir, validation_split=0.2, seed=42)
    texts, labels = list(corpus.val_texts), list(corpus.val_labels)
    seq_length, windows, overlap = 16, 3, 4  # toy documents (~35 word pieces) need 3 windows of 14
    pre = Preprocessor(tiny_encoder.preprocess_handle, seq_length=seq_length)
    strategy = tf.distribute.get_strategy()
    model = build_classifier(tiny_encoder.encoder_handle, len(corpus.class_names), seq_length=seq_length,
                             pooling="mean", dropout=0.1)
    steps = make_steps(strategy, model, optimizer=None)
    val_ds = make_eval_dataset(texts, lambda t: pre.windowed(t, max_windows=windows, overlap=overlap, bucket=False),
                               batch_size=5)
    result = evaluate(steps, strategy.experimental_distribute_dataset(val_ds), labels, len(corpus.class_names))

    served = ServingModule(pre, model, list(corpus.class_names), max_windows=windows, window_overlap=overlap)
    probabilities = served.serve(tf.constant(texts))["probabilities"].numpy()
    np.testing.assert_allclose(tf.nn.softmax(result.doc_logits).numpy(), probabilities, atol=1e-5)
    predicted = probabilities.argmax(axis=-1)
    assert result.accuracy == pytest.approx(float(np.mean(predicted == np.asarray(labels))))
    assert result.confusion.sum() == len(texts)

    head = ServingModule(pre, model, list(corpus.class_names), max_windows=1)
    head_probabilities = head.serve(tf.constant(texts))["probabilities"].numpy()
    assert not np.allclose(head_probabilities, probabilities, atol=1e-5), "documents fit one window: no control"
