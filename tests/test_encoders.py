"""Encoder registry, offline builds, TF Hub fail-fast, and the MiniLM conversion against PyTorch golden numbers."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tensorflow_text  # noqa: F401
import tf_keras

from trainer import encoders
from trainer.encoders import ENCODERS, EncoderError, resolve_encoder

GOLDEN = json.loads((pathlib.Path(__file__).parent / "fixtures" / "minilm_golden.json").read_text("utf-8"))
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("bertbc-cache")


@pytest.fixture(scope="module")
def tiny(cache_dir):
    return resolve_encoder("tiny-random", cache_dir=cache_dir)


@pytest.fixture(scope="module")
def minilm(cache_dir):
    spec = resolve_encoder("minilm-l6", cache_dir=cache_dir)
    return tf.saved_model.load(spec.preprocess_handle), tf.saved_model.load(spec.encoder_handle)


@pytest.fixture(scope="module")
def minilm_outputs(minilm):
    preprocess, encoder = minilm
    inputs = preprocess(tf.constant([c["text"] for c in GOLDEN["cases"]]))
    return inputs, encoder(inputs, training=False)


# ---------------------------------------------------------------- registry

@pytest.mark.parametrize("name, encoder_handle, preprocess_handle", [
    ("small_bert/bert_en_uncased_L-4_H-512_A-8",
     "https://tfhub.dev/tensorflow/small_bert/bert_en_uncased_L-4_H-512_A-8/1",
     "https://tfhub.dev/tensorflow/bert_en_uncased_preprocess/3"),
    ("bert_en_uncased_L-12_H-768_A-12", "https://tfhub.dev/tensorflow/bert_en_uncased_L-12_H-768_A-12/3",
     "https://tfhub.dev/tensorflow/bert_en_uncased_preprocess/3"),
    ("bert_en_cased_L-12_H-768_A-12", "https://tfhub.dev/tensorflow/bert_en_cased_L-12_H-768_A-12/3",
     "https://tfhub.dev/tensorflow/bert_en_cased_preprocess/3"),
    ("bert_multi_cased_L-12_H-768_A-12", "https://tfhub.dev/tensorflow/bert_multi_cased_L-12_H-768_A-12/3",
     "https://tfhub.dev/tensorflow/bert_multi_cased_preprocess/3"),
    ("albert_en_base", "https://tfhub.dev/tensorflow/albert_en_base/2",
     "https://tfhub.dev/tensorflow/albert_en_preprocess/3"),
    ("electra_small", "https://tfhub.dev/google/electra_small/2",
     "https://tfhub.dev/tensorflow/bert_en_uncased_preprocess/3"),
    ("electra_base", "https://tfhub.dev/google/electra_base/2",
     "https://tfhub.dev/tensorflow/bert_en_uncased_preprocess/3"),
    ("experts_pubmed", "https://tfhub.dev/google/experts/bert/pubmed/2",
     "https://tfhub.dev/tensorflow/bert_en_uncased_preprocess/3"),
    ("experts_wiki_books", "https://tfhub.dev/google/experts/bert/wiki_books/2",
     "https://tfhub.dev/tensorflow/bert_en_uncased_preprocess/3"),
    ("talking-heads_base", "https://tfhub.dev/tensorflow/talkheads_ggelu_bert_en_base/1",
     "https://tfhub.dev/tensorflow/bert_en_uncased_preprocess/3"),
])
def test_registry_holds_tutorial_handles(name, encoder_handle, preprocess_handle):
    spec = ENCODERS[name]
    assert (spec.encoder_handle, spec.preprocess_handle) == (encoder_handle, preprocess_handle)


def test_registry_has_all_small_berts_and_offline_default():
    small = [f"small_bert/bert_en_uncased_L-{n}_H-{h}_A-{h // 64}"
             for n in (2, 4, 6, 8, 10, 12) for h in (128, 256, 512, 768)]
    assert all(name in ENCODERS for name in small) and len(small) == 24
    assert len(ENCODERS) == 24 + 9 + 2
    assert encoders.DEFAULT_ENCODER == "minilm-l6"
    assert ENCODERS["minilm-l6"].default_pooling == "mean" and ENCODERS["minilm-l6"].lowercase
    assert not ENCODERS["bert_en_cased_L-12_H-768_A-12"].lowercase


def test_unknown_name_without_handles_is_rejected(tmp_path):
    with pytest.raises(EncoderError, match="unknown encoder name='nope'"):
        resolve_encoder("nope", cache_dir=tmp_path)


def test_explicit_local_handles_override(tiny, tmp_path):
    spec = resolve_encoder("my-bert", encoder_handle=tiny.encoder_handle,
                           preprocess_handle=tiny.preprocess_handle, cache_dir=tmp_path)
    assert (spec.name, spec.encoder_handle, spec.default_pooling) == ("my-bert", tiny.encoder_handle, "cls")
    with pytest.raises(EncoderError, match="neither a URL nor an existing path"):
        resolve_encoder("my-bert", encoder_handle=str(tmp_path / "missing"),
                        preprocess_handle=tiny.preprocess_handle, cache_dir=tmp_path)


# ---------------------------------------------------------------- offline fail-fast

@pytest.fixture
def closed_port_url():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there any more: connections are refused at once
    return f"http://127.0.0.1:{port}/tensorflow/bert_en_uncased_L-2_H-128_A-2/1"


def test_uncached_unreachable_handle_fails_fast(closed_port_url, tmp_path, monkeypatch):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub"))
    start = time.monotonic()
    with pytest.raises(EncoderError) as err:
        resolve_encoder("custom", encoder_handle=closed_port_url, preprocess_handle=closed_port_url,
                        cache_dir=tmp_path)
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert closed_port_url in message and "TFHUB_CACHE_DIR=" in message and f"hub.resolve('{closed_port_url}')" in message


def test_cached_handle_passes_offline(closed_port_url, tmp_path, monkeypatch):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub"))
    cached = encoders.tfhub_cache_path(closed_port_url)
    assert cached.parent == tmp_path / "hub"
    cached.mkdir(parents=True)
    (cached / "saved_model.pb").write_bytes(b"")
    encoders.check_handle_available(closed_port_url)  # no exception: hub would load it from the cache


# ---------------------------------------------------------------- offline build cache

def test_offline_build_is_cached_and_half_built_dir_rebuilt(tiny, cache_dir, tmp_path):
    target = pathlib.Path(tiny.encoder_handle).parent
    assert target == pathlib.Path(cache_dir) / "encoders" / "tiny-random"
    marker_mtime = os.stat(target / "BUILD_COMPLETE").st_mtime_ns
    start = time.monotonic()
    assert resolve_encoder("tiny-random", cache_dir=cache_dir) == tiny
    assert time.monotonic() - start < 1 and os.stat(target / "BUILD_COMPLETE").st_mtime_ns == marker_mtime

    half = tmp_path / "encoders" / "tiny-random"
    (half / "encoder").mkdir(parents=True)
    (half / "encoder" / "junk").write_text("crashed build")
    spec = resolve_encoder("tiny-random", cache_dir=tmp_path)
    assert (half / "BUILD_COMPLETE").is_file() and not (half / "encoder" / "junk").exists()
    assert tf.saved_model.load(spec.encoder_handle) is not None
    assert not [p for p in (tmp_path / "encoders").iterdir() if p.name.startswith(".tmp")]


# ---------------------------------------------------------------- hub.KerasLayer contract

def test_keras_layer_fine_tunes_all_encoder_variables(tiny):
    preprocess = hub.load(tiny.preprocess_handle)
    encoder = hub.KerasLayer(tiny.encoder_handle, trainable=True)
    inputs = {k: tf_keras.Input([None], dtype=tf.int32, name=k)
              for k in ("input_word_ids", "input_mask", "input_type_ids")}
    logits = tf_keras.layers.Dense(3)(encoder(inputs)["pooled_output"])
    model = tf_keras.Model(inputs, logits)
    batch = preprocess(tf.constant(["a news story about football", "shares fell sharply"]))

    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(batch, training=True) ** 2)
    grads = tape.gradient(loss, encoder.trainable_weights)
    assert len(encoder.trainable_weights) == 5 + 2 * 16 + 2  # 3 embeddings + LayerNorm, 16 per layer, pooler
    assert all(g is not None and float(tf.reduce_max(tf.abs(tf.convert_to_tensor(g)))) > 0 for g in grads)

    train_a, train_b = model(batch, training=True), model(batch, training=True)
    infer_a, infer_b = model(batch, training=False), model(batch, training=False)
    assert not np.allclose(train_a, train_b)  # dropout active
    np.testing.assert_array_equal(infer_a, infer_b)


def test_encoder_output_structure(tiny):
    encoder = hub.load(tiny.encoder_handle)
    ids = tf.constant([[101, 7592, 102, 0]], tf.int32)
    out = encoder(dict(input_word_ids=ids, input_mask=tf.cast(ids > 0, tf.int32),
                       input_type_ids=tf.zeros_like(ids)), training=False)
    assert out["pooled_output"].shape == (1, 32) and out["sequence_output"].shape == (1, 4, 32)
    assert len(out["encoder_outputs"]) == 2
    np.testing.assert_array_equal(out["encoder_outputs"][-1], out["sequence_output"])
    assert len(encoder.variables) == len(encoder.trainable_variables) == 39 and encoder.regularization_losses == []


# ---------------------------------------------------------------- MiniLM golden parity

@pytest.mark.parametrize("index", range(len(GOLDEN["cases"])), ids=[c["text"][:20] for c in GOLDEN["cases"]])
def test_minilm_tokenizer_matches_reference(minilm_outputs, index):
    inputs, _ = minilm_outputs
    ids = GOLDEN["cases"][index]["input_ids"]
    expected = np.zeros([GOLDEN["seq_length"]], np.int32)
    expected[:len(ids)] = ids
    np.testing.assert_array_equal(inputs["input_word_ids"][index], expected)
    assert int(tf.reduce_sum(inputs["input_mask"][index])) == len(ids)
    assert int(tf.reduce_sum(inputs["input_type_ids"][index])) == 0


@pytest.mark.parametrize("index", range(len(GOLDEN["cases"])), ids=[c["text"][:20] for c in GOLDEN["cases"]])
def test_minilm_encoder_matches_pytorch(minilm_outputs, index):
    inputs, outputs = minilm_outputs
    case = GOLDEN["cases"][index]
    n = len(case["input_ids"])
    sequence = outputs["sequence_output"][index].numpy()
    head = np.array(case["sequence_output_head"])
    assert np.abs(sequence[:len(head)] - head).max() <= TOLERANCE
    assert np.abs(outputs["pooled_output"][index].numpy() - np.array(case["pooled_output"])).max() <= TOLERANCE
    assert np.abs(sequence[:n].mean(axis=0) - np.array(case["mean_embedding"])).max() <= TOLERANCE
