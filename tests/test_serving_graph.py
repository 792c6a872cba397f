"""The exported serving graph: length buckets give the answers of full-length packing, and the bf16 export.

All on the tiny random encoder (MiniLM vocab, 2 layers) with a trained length of 128 (buckets 32, 64, 128).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from trainer import opcheck
from trainer.encoders import resolve_encoder
from trainer.export import ServingModule, export_saved_model
from trainer.model import INPUT_NAMES, build_classifier, with_any_length
from trainer.preprocessing import Preprocessor

SEQ = 128
CLASSES = ["business", "entertainment", "politics", "sport", "tech"]
# "word" is one word piece, so "word " * n packs to n + 2 tokens ([CLS] … [SEP]).
TEXTS = ["Shares in BP rose 3%.", "", "東京 😀 ½ café", "\xa315.8m", "word " * 30, "word " * 31,
         "Arsenal beat Chelsea 2-1 with a late goal from Henry. " * 6, "The minister said the vote " * 40]


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return resolve_encoder("tiny-random", cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def classifier(spec):
    model = build_classifier(spec.encoder_handle, len(CLASSES), seq_length=SEQ, pooling="mean", dropout=0.0)
    head = model.get_layer("classifier")
    # A random encoder gives nearly equal logits; a steep head spreads them, so labels differ between texts
    # and a label comparison means something.
    head.kernel.assign(tf.random.stateless_normal(head.kernel.shape, seed=(1, 2)) * 300.0)
    return model


@pytest.fixture(scope="module")
def preprocessor(spec):
    return Preprocessor(spec.preprocess_handle, seq_length=SEQ)


def _export(preprocessor, classifier, base, precision):
    _, path = export_saved_model(ServingModule(preprocessor, classifier, CLASSES, precision=precision), base)
    return path


@pytest.fixture(scope="module")
def exports(tmp_path_factory, preprocessor, classifier):
    base = tmp_path_factory.mktemp("models") / "bertbc"
    return {p: _export(preprocessor, classifier, base, p) for p in ("fp32", "bf16")}


@pytest.fixture(scope="module")
def fp32(exports):
    return tf.saved_model.load(str(exports["fp32"]))


def _full_length_reference(loaded, texts):
    """What the export answered before length buckets: everything packed to the trained length."""
    features = loaded.preprocessor(tf.constant(texts))
    assert features["input_mask"].shape[1] == SEQ
    logits = loaded.classify_features(*(features[name] for name in INPUT_NAMES))
    probabilities = tf.nn.softmax(logits, axis=-1).numpy()
    return probabilities, probabilities.argmax(axis=-1)


@pytest.mark.parametrize("texts, length", [
    ([], 32),
    ([""], 32),
    (["Shares in BP rose 3%."], 32),
    (["word " * 30], 32),             # 32 tokens: the bucket's exact size
    (["word " * 31], 64),             # 33 tokens: one more goes to the next bucket
    (["word " * 62], 64),
    (["word " * 63], 128),
    (["word " * 5000], 128),          # truncated to the trained length, never beyond
    (["Shares rose.", "word " * 40], 64),  # a batch is packed to its longest text
])
def test_requests_are_packed_to_their_bucket(fp32, texts, length):
    features = fp32.preprocessor.bucketed(tf.constant(texts, tf.string))
    for name in INPUT_NAMES:
        assert features[name].shape == (len(texts), length) and features[name].dtype == tf.int32
    full = fp32.preprocessor(tf.constant(texts, tf.string))
    for name in INPUT_NAMES:  # the cut drops padding only
        np.testing.assert_array_equal(features[name].numpy(), full[name].numpy()[:, :length])
        assert not full[name].numpy()[:, length:].any()


def test_single_texts_match_full_length_packing(fp32):
    serve = fp32.signatures["serving_default"]
    probabilities, labels = _full_length_reference(fp32, TEXTS)
    assert len(set(labels.tolist())) >= 2, "the fixture head should give varied labels"
    for i, text in enumerate(TEXTS):
        out = serve(text=tf.constant([text]))
        np.testing.assert_allclose(out["probabilities"].numpy()[0], probabilities[i], atol=1e-5, rtol=0)
        assert out["class_id"].numpy()[0] == labels[i]
        assert out["label"].numpy()[0].decode() == CLASSES[labels[i]]


def test_merged_batch_gives_each_text_its_own_answer(fp32):
    # TF Serving's batching concatenates the texts of several requests before the graph: the short ones are
    # then packed to the longest one's bucket, and must still get the answer they get alone.
    serve = fp32.signatures["serving_default"]
    merged = serve(text=tf.constant(TEXTS))
    for i, text in enumerate(TEXTS):
        alone = serve(text=tf.constant([text]))
        np.testing.assert_allclose(merged["probabilities"].numpy()[i], alone["probabilities"].numpy()[0],
                                   atol=1e-5, rtol=0)
        assert merged["class_id"].numpy()[i] == alone["class_id"].numpy()[0]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_signature_is_unchanged(exports, precision):
    serve = tf.saved_model.load(str(exports[precision])).signatures["serving_default"]
    (text,) = serve.structured_input_signature[1].values()
    assert (text.name, text.dtype, text.shape.as_list()) == ("text", tf.string, [None])
    outputs = {k: (v.dtype, v.shape.as_list()) for k, v in serve.structured_outputs.items()}
    assert outputs == {"probabilities": (tf.float32, [None, len(CLASSES)]), "class_id": (tf.int64, [None]),
                       "label": (tf.string, [None])}


def _ops_per_function(export_dir) -> list[list[str]]:
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((export_dir / "saved_model.pb").read_bytes())
    return [[n.op for n in f.node_def] for g in saved_model.meta_graphs for f in g.graph_def.library.function]


def test_fp32_serving_graph_is_the_trained_model_with_fused_ops(exports, fp32, classifier):
    """The export rebuilds the encoder (trainer/serving_encoder.py): same logits as the trained Keras model at
    every bucket length, but 2-D MatMul + BiasAdd dense layers, one Q/K/V matmul and no pooler (mean pooling)."""
    for texts in (["Shares rose."], ["word " * 40, "Shares rose."], ["word " * 5000, ""]):
        features = fp32.preprocessor.bucketed(tf.constant(texts))
        want = with_any_length(classifier)(features, training=False).numpy()
        got = fp32.classify_features(*(features[name] for name in INPUT_NAMES)).numpy()
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)  # float rounding
    layers = 2  # the tiny encoder
    classifying = [ops for ops in _ops_per_function(exports["fp32"]) if "MatMul" in ops]
    assert classifying, "no function of the export runs the encoder"
    for ops in classifying:  # the serving signature and classify_features
        assert "Einsum" not in ops
        assert ops.count("MatMul") == 4 * layers + 1, ops.count("MatMul")  # qkv, attn out, intermediate, out; head
        assert ops.count("BiasAdd") == 4 * layers + 1
        assert ops.count("Transpose") == 2 * layers


def test_windowed_buckets_answer_like_full_length_windows(preprocessor, classifier, fp32):
    """With windows, buckets still cut padding only: each request alone gets the answer of every window
    packed to the trained length (serve_full_length, kept on the SavedModel for make bench-parity)."""
    assert hasattr(fp32, "serve_full_length")
    module = ServingModule(preprocessor, classifier, CLASSES, max_windows=3, window_overlap=16)
    texts = [*TEXTS, "The minister said the vote " * 120]  # the last ones need several windows
    want = module.serve_full_length(tf.constant(texts))
    for i, text in enumerate(texts):
        got = module.serve(tf.constant([text]))
        np.testing.assert_allclose(got["probabilities"].numpy()[0], want["probabilities"].numpy()[i], atol=1e-5,
                                   rtol=0)
        assert got["class_id"].numpy()[0] == want["class_id"].numpy()[i]
    short = module.preprocessor.windowed(tf.constant(texts[:1]), max_windows=3, overlap=16)[0]
    assert short["input_mask"].shape == (1, 32)  # the headline really ran at its bucket


def test_export_refuses_a_rebuild_that_drifts_from_the_trained_model(preprocessor, classifier):
    from trainer.export import check_rebuild

    module = ServingModule(preprocessor, classifier, CLASSES)
    features = preprocessor(tf.constant(TEXTS))
    assert check_rebuild(module, classifier, features) < 1e-5
    embeddings = module.encoder.position_embeddings  # e.g. a rebuild that misreads one variable
    embeddings.assign(tf.random.stateless_normal(embeddings.shape, seed=(3, 4), stddev=0.02))
    with pytest.raises(ValueError, match="no longer matches"):
        check_rebuild(module, classifier, features)


def _bf16_ops(export_dir) -> set[str]:
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((export_dir / "saved_model.pb").read_bytes())
    nodes = [n for g in saved_model.meta_graphs for f in g.graph_def.library.function for n in f.node_def]
    return {n.op for n in nodes if n.attr["T"].type == tf.bfloat16.as_datatype_enum}


def test_bf16_export_computes_in_bf16_and_agrees(exports, fp32):
    # The casts are in the saved graph itself (TF Serving applies no session-level mixed precision).
    assert {"MatMul", "BatchMatMulV2"} <= _bf16_ops(exports["bf16"])
    assert not _bf16_ops(exports["fp32"]) & {"Einsum", "BatchMatMulV2", "MatMul"}
    bf16 = tf.saved_model.load(str(exports["bf16"]))
    texts = tf.constant(TEXTS)
    got = bf16.signatures["serving_default"](text=texts)
    want = fp32.signatures["serving_default"](text=texts)
    assert got["probabilities"].dtype == tf.float32
    np.testing.assert_allclose(got["probabilities"].numpy().sum(axis=1), 1.0, atol=1e-5)
    # bf16 keeps ~3 significant digits; through this steep random head that still moves probabilities little.
    np.testing.assert_allclose(got["probabilities"].numpy(), want["probabilities"].numpy(), atol=0.05)
    assert not np.array_equal(got["probabilities"].numpy(), want["probabilities"].numpy())  # really bf16
    short = bf16.preprocessor.bucketed(tf.constant(["Shares rose."]))
    assert short["input_mask"].shape == (1, 32)


def test_bf16_export_keeps_the_op_set_serving_has(exports):
    assert "BatchMatMulV2" in opcheck.check_saved_model_ops(exports["bf16"])


def test_bf16_needs_a_converted_encoder(spec, tmp_path, preprocessor):
    foreign = tmp_path / "encoder"
    shutil.copytree(spec.encoder_handle, foreign)
    (foreign / "assets.extra" / "bert_config.json").unlink()  # like a TF Hub encoder: no config to rebuild from
    model = build_classifier(str(foreign), len(CLASSES), seq_length=SEQ)
    with pytest.raises(ValueError, match="bert_convert"):
        ServingModule(preprocessor, model, CLASSES, precision="bf16")
    with pytest.raises(ValueError, match="precision='fp16'"):
        ServingModule(preprocessor, model, CLASSES, precision="fp16")


def test_windows_read_the_whole_text_and_one_window_is_the_head(tiny_encoder):
    """A keyword only at the END of a long text changes the windowed answer, never the head-only one."""
    import tensorflow as tf

    from trainer.export import ServingModule
    from trainer.model import build_classifier
    from trainer.preprocessing import Preprocessor

    pre = Preprocessor(tiny_encoder.preprocess_handle, seq_length=16)
    model = build_classifier(tiny_encoder.encoder_handle, 3, seq_length=16, dropout=0.0)
    dense = model.get_layer("classifier")
    dense.kernel.assign(tf.random.stateless_normal(dense.kernel.shape, seed=(3, 4)) * 10.0)
    head = ServingModule(pre, model, ["a", "b", "c"])
    one = ServingModule(pre, model, ["a", "b", "c"], max_windows=1)
    many = ServingModule(pre, model, ["a", "b", "c"], max_windows=4, window_overlap=4)
    start = "the market said that " * 5  # 20 word pieces: more than the 14-piece head
    texts = tf.constant([start + "shares profit bank economy " * 6, start + "football goal team coach " * 6,
                         "short text"])
    head_p = head.serve(texts)["probabilities"].numpy()
    np.testing.assert_allclose(one.serve(texts)["probabilities"].numpy(), head_p, atol=1e-6)
    many_p = many.serve(texts)["probabilities"].numpy()
    np.testing.assert_allclose(head_p[0], head_p[1], atol=1e-6)  # same head: same head-only answer
    log_p = np.log(np.maximum(many_p, 1e-37))  # a random encoder saturates; compare in log space
    assert np.abs(log_p[0] - log_p[1]).max() > 1e-2              # different endings: windows see them
    np.testing.assert_allclose(many_p[2], head_p[2], atol=1e-5)  # a short text is one window = its head
    features, doc_index = pre.windowed(texts, max_windows=4, overlap=4)
    assert doc_index.numpy().tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2]
    assert features["input_word_ids"].shape[1] == 16


def test_windowed_export_keeps_the_signature_and_op_set(tiny_encoder, tmp_path):
    import tensorflow as tf

    from trainer.export import ServingModule
    from trainer.model import build_classifier
    from trainer.preprocessing import Preprocessor

    pre = Preprocessor(tiny_encoder.preprocess_handle, seq_length=16)
    model = build_classifier(tiny_encoder.encoder_handle, 3, seq_length=16, dropout=0.0)
    module = ServingModule(pre, model, ["a", "b", "c"], max_windows=3, window_overlap=4)
    _, path = export_saved_model(module, tmp_path / "bertbc")
    opcheck.check_saved_model_ops(str(path))
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    texts = tf.constant(["a long text " * 40, "", "short"])
    out = serve(text=texts)
    assert out["probabilities"].shape == (3, 3)
    np.testing.assert_allclose(out["probabilities"].numpy(), module.serve(texts)["probabilities"].numpy(),
                               atol=1e-5)
