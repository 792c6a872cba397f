"""A bfloat16 copy of a fine-tuned encoder, for the optional ``--export-precision bf16`` export.

The trained classifier wraps the encoder SavedModel with ``hub.KerasLayer``; its graph is fixed at float32,
and Grappler's auto-mixed-precision rewrite is a session option that is not stored in a SavedModel, so TF
Serving would never apply it. Instead the export rebuilds the encoder from ``trainer.bert_convert`` (the code
that wrote the encoder SavedModel, config read from its ``assets.extra/bert_config.json``), copies the
fine-tuned values into it and stores the matmul weights as bfloat16 variables. The bf16 casts are therefore
ordinary ops of the saved graph and run the same in Python and in TF Serving:

* bfloat16: the dense kernels and biases (Q/K/V, attention output, intermediate, output, pooler), the
  activations between LayerNorms, attention scores and softmax, GELU;
* float32: embeddings and their sum, every LayerNorm (computed in float32, result cast back), the mean
  pooling, the classification head, softmax over classes.

Only encoders built by ``trainer.bert_convert`` (``minilm-l6``, ``tiny-random``) can be rebuilt; a TF Hub
encoder is an opaque SavedModel and gets a clear error.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import tensorflow as tf

from trainer.bert_convert import BertConfig, BertEncoder, random_weights

CONFIG_FILE = pathlib.Path("assets.extra") / "bert_config.json"
_BF16_BLOCKS = ("query", "key", "value", "attention_output", "intermediate", "output")


class Bf16BertEncoder(BertEncoder):
    """``BertEncoder`` whose matmuls run in bfloat16 and whose LayerNorms run in float32.

    Build it with ``from_trained``; ``forward(inputs)`` returns bfloat16 ``sequence_output`` [B, S, H] and
    ``pooled_output`` [B, H].
    """

    # Only the first arguments are named: the rest pass through, so these overrides follow BertEncoder's
    # signature changes (tests/test_serving_graph.py runs the bf16 export end to end).
    def _norm(self, x, params, *args, **kwargs):
        normed = super()._norm(tf.cast(x, tf.float32), params, *args, **kwargs)
        return tf.cast(normed, tf.bfloat16)

    def _attention(self, x, additive_mask, *args, **kwargs):
        return super()._attention(x, tf.cast(additive_mask, x.dtype), *args, **kwargs)

    @classmethod
    def from_trained(cls, config: BertConfig, trained_variables) -> Bf16BertEncoder:
        """Copies fine-tuned float32 variables (matched by name, e.g. ``bert/layer_0/query/kernel:0``)."""
        encoder = cls(config, random_weights(config))  # right shapes and names; values overwritten below
        trained = {v.name: v for v in trained_variables}
        own = {v.name: v for v in encoder.variables}
        if set(trained) != set(own):
            raise ValueError(f"trained encoder variables do not match a BERT of {config}: missing "
                             f"{sorted(set(own) - set(trained))[:5]}, unexpected {sorted(set(trained) - set(own))[:5]}")
        for name, variable in own.items():
            if tuple(variable.shape) != tuple(trained[name].shape):
                raise ValueError(f"{name}: shape {trained[name].shape} in the trained model, {variable.shape} expected")
            variable.assign(trained[name])

        def to_bf16(pair):
            return tuple(tf.Variable(tf.cast(v, tf.bfloat16), name=v.name.split(":")[0] + "_bf16", trainable=False)
                         for v in pair)

        with encoder.name_scope:
            encoder.layers = [{k: to_bf16(v) if k in _BF16_BLOCKS else v for k, v in layer.items()}
                              for layer in encoder.layers]
            encoder.pooler = to_bf16(encoder.pooler)
        return encoder


def encoder_config(encoder_handle: str) -> BertConfig:
    """The BERT config that ``trainer.bert_convert`` stored beside the encoder SavedModel."""
    path = pathlib.Path(encoder_handle) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"--export-precision bf16 needs an encoder built by trainer.bert_convert (minilm-l6, "
                         f"tiny-random): {encoder_handle!r} has no {CONFIG_FILE}; export with fp32 instead")
    fields = {f.name for f in dataclasses.fields(BertConfig)}
    return BertConfig(**{k: v for k, v in json.loads(path.read_text()).items() if k in fields})
