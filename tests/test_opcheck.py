"""Op-set check: a real Preprocessor + encoder export passes; a hand-made graph with foreign ops fails."""

from __future__ import annotations

import pytest
import tensorflow as tf
import tensorflow_hub as hub
from tensorflow.core.protobuf import saved_model_pb2

from trainer import opcheck
from trainer.encoders import resolve_encoder
from trainer.preprocessing import Preprocessor


def _write_handmade_saved_model(path, graph_ops, function_ops):
    """saved_model.pb whose graph has ``graph_ops`` and one library function with ``function_ops``."""
    saved_model = saved_model_pb2.SavedModel()
    graph = saved_model.meta_graphs.add().graph_def
    for i, op in enumerate(graph_ops):
        graph.node.add(name=f"n{i}", op=op)
    fn = graph.library.function.add()
    fn.signature.name = "__inference_body_7"
    for i, op in enumerate(function_ops):
        fn.node_def.add(name=f"f{i}", op=op)
    graph.node.add(name="call", op="__inference_body_7")  # a function call, not an op
    path.mkdir()
    (path / "saved_model.pb").write_bytes(saved_model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def exported_model(tmp_path_factory):
    spec = resolve_encoder("tiny-random", cache_dir=tmp_path_factory.mktemp("cache"))
    module = tf.Module()
    module.pre = Preprocessor(spec.preprocess_handle, seq_length=16, truncation="head_tail")
    module.encoder = hub.load(spec.encoder_handle)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(text):
        return {"pooled": module.encoder(module.pre(text), training=False)["pooled_output"]}

    module.serve = serve
    path = tmp_path_factory.mktemp("export") / "1"
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})
    return path


def test_real_export_passes_and_lists_tokenizer_ops(exported_model, capsys):
    ops = opcheck.check_saved_model_ops(exported_model)
    assert {"WordpieceTokenizeWithOffsets", "RegexSplitWithOffsets", "UnicodeTranscode", "BatchMatMulV2"} <= ops
    assert not ops & opcheck.SERVING_2_20_ONLY
    assert not any(op.startswith("__inference") for op in ops)
    assert opcheck.main([str(exported_model)]) == 0
    assert "0 unsupported" in capsys.readouterr().out


@pytest.mark.parametrize("graph_ops, function_ops, bad", [
    (["Placeholder", "Addons>Foo"], ["MatMul"], {"Addons>Foo"}),
    (["Placeholder"], ["MatMul", "MyCustomOp", "WordpieceTokenizeWithOffsets"], {"MyCustomOp"}),
    (["Placeholder", "Addons>Foo"], ["SentencepieceOp", "Bar"], {"Addons>Foo", "Bar"}),
])
def test_foreign_ops_are_named(tmp_path, graph_ops, function_ops, bad, capsys):
    path = _write_handmade_saved_model(tmp_path / "m", graph_ops, function_ops)
    with pytest.raises(opcheck.UnsupportedOpsError) as err:
        opcheck.check_saved_model_ops(path)
    assert err.value.ops == bad and all(op in str(err.value) for op in bad)
    assert opcheck.main([str(path)]) == 1
    assert "UNSUPPORTED ops" in capsys.readouterr().out


def test_clean_handmade_graph_passes_without_function_names(tmp_path):
    path = _write_handmade_saved_model(tmp_path / "m", ["Placeholder"], ["MatMul", "TFText>RoundRobinTrim"])
    assert opcheck.check_saved_model_ops(path) == {"Placeholder", "MatMul", "TFText>RoundRobinTrim"}


def test_registries_split_core_and_tf_text():
    core, tf_text = opcheck.op_registries()
    assert {"MatMul", "UnicodeTranscode", "StatefulPartitionedCall"} <= core
    assert {"WordpieceTokenizeWithOffsets", "TFText>RoundRobinTrim"} <= tf_text and not core & tf_text


def test_missing_saved_model_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved_model.pb"):
        opcheck.check_saved_model_ops(tmp_path)
