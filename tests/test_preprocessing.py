"""In-graph preprocessing: UTF-8 repair, truncation strategies, edge inputs, tf.data and export use."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from trainer.encoders import resolve_encoder
from trainer.preprocessing import (
    Preprocessor,
    bucket_lengths,
    repair_utf8,
    token_lengths,
    trim_to_bucket,
    truncate,
)

GOLDEN = json.loads((pathlib.Path(__file__).parent / "fixtures" / "minilm_golden.json").read_text("utf-8"))
CLS, SEP = 101, 102


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    # tiny-random shares the MiniLM vocab and tokenizer, so token ids are MiniLM's.
    return resolve_encoder("tiny-random", cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def head(spec):
    return Preprocessor(spec.preprocess_handle, seq_length=128, truncation="head")


def _real_ids(packed, row):
    return packed["input_word_ids"][row][packed["input_mask"][row] == 1].numpy().tolist()


@pytest.mark.parametrize("row, budget, truncation, expected", [
    ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 4, "head", [0, 1, 2, 3]),
    ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 4, "head_tail", [0, 7, 8, 9]),
    ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 8, "head_tail", [0, 1, 4, 5, 6, 7, 8, 9]),
    ([0, 1, 2], 4, "head_tail", [0, 1, 2]),
    ([0, 1, 2, 3], 4, "head_tail", [0, 1, 2, 3]),
    ([], 4, "head_tail", []),
])
def test_truncate(row, budget, truncation, expected):
    tokens = tf.ragged.constant([row, [5]], dtype=tf.int32, row_splits_dtype=tf.int64)
    out = truncate(tokens, budget, truncation)
    assert out.to_list() == [expected, [5]]


def test_truncate_rejects_bad_arguments():
    tokens = tf.ragged.constant([[1]])
    with pytest.raises(ValueError, match="truncation='tail'"):
        truncate(tokens, 4, "tail")
    with pytest.raises(ValueError, match="budget=0"):
        truncate(tokens, 0)


def test_repair_utf8_decodes_latin1_rows_only():
    texts = tf.constant([b"\xa315.8m profit", "£15.8m profit".encode(), b"caf\xe9", b"", "naïve 😀".encode()])
    assert repair_utf8(texts).numpy().tolist() == [
        "£15.8m profit".encode(), "£15.8m profit".encode(), "café".encode(), b"", "naïve 😀".encode()]


def test_latin1_pound_tokenizes_like_utf8(head):
    packed = head(tf.constant([b"\xa315.8m deal", "£15.8m deal".encode()]))
    assert _real_ids(packed, 0) == _real_ids(packed, 1)
    assert 100 not in _real_ids(packed, 0)  # no [UNK]


@pytest.mark.parametrize("text", [b"", b"   \t\n  ", b"\xff\xfe\x00\x80 broken \xc3", b"word " * 200_000,
                                  "東京 😀 ½".encode()], ids=["empty", "whitespace", "invalid-utf8", "1MB", "unicode"])
def test_edge_inputs_pack_to_fixed_shape(head, text):
    packed = head(tf.constant([text, b"ok"]))
    for key in ("input_word_ids", "input_mask", "input_type_ids"):
        assert packed[key].shape == (2, 128) and packed[key].dtype == tf.int32
    ids = _real_ids(packed, 0)
    assert ids[0] == CLS and ids[-1] == SEP and 2 <= len(ids) <= 128


@pytest.mark.parametrize("index", range(len(GOLDEN["cases"])), ids=[c["text"][:20] for c in GOLDEN["cases"]])
def test_head_truncation_matches_reference_tokenizer(head, index):
    case = GOLDEN["cases"][index]
    assert _real_ids(head(tf.constant([case["text"]])), 0) == case["input_ids"]


@pytest.mark.parametrize("seq_length, n_head, n_tail", [(128, 31, 95), (16, 3, 11)])
def test_head_tail_keeps_quarter_head_three_quarter_tail(spec, seq_length, n_head, n_tail):
    text = GOLDEN["cases"][-1]["text"] + " the end of the story."
    pre = Preprocessor(spec.preprocess_handle, seq_length=seq_length, truncation="head_tail")
    full = pre.wordpieces(tf.constant([text]))[0].numpy().tolist()
    assert len(full) > seq_length
    assert _real_ids(pre(tf.constant([text])), 0) == [CLS] + full[:n_head] + full[-n_tail:] + [SEP]


def test_works_in_dataset_map(head):
    texts = [c["text"] for c in GOLDEN["cases"]]
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(texts)).batch(3).map(head)
    batches = list(ds)
    assert [b["input_word_ids"].shape[0] for b in batches] == [3, 3, 1]
    assert _real_ids(batches[0], 0) == GOLDEN["cases"][0]["input_ids"]


def test_survives_export_in_tf_function(spec, tmp_path):
    module = tf.Module()
    module.pre = Preprocessor(spec.preprocess_handle, seq_length=32, truncation="head_tail")
    module.serve = tf.function(lambda text: module.pre(text), input_signature=[tf.TensorSpec([None], tf.string)])
    tf.saved_model.save(module, str(tmp_path / "export"))
    loaded = tf.saved_model.load(str(tmp_path / "export"))
    texts = tf.constant([b"\xa3 caf\xe9", GOLDEN["cases"][-1]["text"].encode()])
    for key, value in module.pre(texts).items():
        np.testing.assert_array_equal(loaded.serve(texts)[key], value)
    assert list((tmp_path / "export" / "assets").iterdir())  # the vocab travels with the export


def test_token_lengths_are_untruncated_wordpiece_counts(spec):
    texts = [c["text"].encode() for c in GOLDEN["cases"]]
    lengths = token_lengths(spec.preprocess_handle, texts, batch_size=4)
    assert lengths.dtype == np.int64 and lengths.shape == (len(texts),)
    expected = [len(c["input_ids"]) - 2 for c in GOLDEN["cases"]]
    assert lengths[:-1].tolist() == expected[:-1] and lengths[-1] > 126
    assert token_lengths(spec.preprocess_handle, []).shape == (0,)


def test_preprocessor_rejects_bad_arguments(spec):
    with pytest.raises(ValueError, match="truncation='middle'"):
        Preprocessor(spec.preprocess_handle, truncation="middle")
    with pytest.raises(ValueError, match="seq_length=2"):
        Preprocessor(spec.preprocess_handle, seq_length=2)


@pytest.mark.parametrize("seq_length, smallest, expected", [
    (256, 32, (32, 64, 128, 256)),
    (512, 32, (32, 64, 128, 256, 512)),
    (128, 32, (32, 64, 128)),
    (48, 32, (32, 48)),
    (32, 32, (32,)),
    (16, 32, (16,)),
    (100, 8, (8, 16, 32, 64, 100)),
])
def test_bucket_lengths(seq_length, smallest, expected):
    assert bucket_lengths(seq_length, smallest) == expected


def test_bucket_lengths_rejects_bad_arguments():
    with pytest.raises(ValueError, match="seq_length=0"):
        bucket_lengths(0)


@pytest.mark.parametrize("real_lengths, expected", [
    ([3], 4), ([4], 4), ([5], 8), ([2, 7], 8), ([9, 1], 12), ([12], 12), ([], 4),
])
def test_trim_to_bucket_keeps_the_longest_row(real_lengths, expected):
    width = 12
    mask = np.array([[1] * n + [0] * (width - n) for n in real_lengths], np.int32).reshape(-1, width)
    features = {"input_word_ids": mask * 7, "input_mask": mask, "input_type_ids": np.zeros_like(mask)}
    out = trim_to_bucket({k: tf.constant(v) for k, v in features.items()}, (4, 8, 12))
    for key, value in features.items():
        np.testing.assert_array_equal(out[key].numpy(), value[:, :expected])


@pytest.mark.parametrize("truncation", ["head", "head_tail"])
@pytest.mark.parametrize("windows", [1, 2, 3])
def test_validation_packs_like_serving(spec, truncation, windows):
    """Validation (``windowed(bucket=False)``, what run.py feeds make_eval_dataset) must see the tokens serving
    sees, for every truncation and window count; with one window that is also what training packs."""
    from trainer.export import serving_features

    pre = Preprocessor(spec.preprocess_handle, seq_length=16, truncation=truncation)
    texts = tf.constant([GOLDEN["cases"][-1]["text"], "short one", "", " ".join(["word"] * 40)])
    validation, val_index = pre.windowed(texts, max_windows=windows, overlap=4, bucket=False)
    served, doc_index = serving_features(pre, texts, max_windows=windows, overlap=4, bucket=False)
    bucketed, _ = serving_features(pre, texts, max_windows=windows, overlap=4, bucket=True)
    if windows == 1:
        assert doc_index is None and val_index.numpy().tolist() == [0, 1, 2, 3]
        for name, value in pre(texts).items():  # training's packing
            np.testing.assert_array_equal(validation[name], value, err_msg=name)
    else:
        np.testing.assert_array_equal(doc_index, val_index)
    for name in validation:
        np.testing.assert_array_equal(validation[name], served[name], err_msg=name)
        length = bucketed[name].shape[1]
        np.testing.assert_array_equal(validation[name][:, :length], bucketed[name], err_msg=name)
        assert not validation[name].numpy()[:, length:].any()
