"""The fine-tuned encoder rebuilt for serving: the same math as training, fewer and fused ops, fp32 or bf16.

Training runs the encoder SavedModel that ``trainer.bert_convert`` wrote, through ``hub.KerasLayer``: einsum
dense layers, separate Q/K/V projections, four transposes per attention block, a pooler computed even when mean
pooling ignores it. That graph is fixed once saved, and Grappler's mixed-precision rewrite is a session option
TF Serving never sees. So the export rebuilds the encoder from its ``bert_config.json`` and the fine-tuned
values (matched by name), as plain ops that TF Serving's own Grappler fuses:

* activations kept 2-D ``[B*S, H]``, every dense layer ``MatMul + BiasAdd`` (+ exact GELU for the
  intermediate), which the oneDNN remapper turns into one fused matmul each;
* Q, K and V in one matmul against the concatenated kernel, with the attention scale 1/sqrt(d) folded into Q;
  one transpose splits the three, one merges the heads back (2 per layer instead of 4);
* LayerNorm as ``tf.nn.batch_normalization`` over ``tf.nn.moments`` (float32 in both precisions);
* the pooler only for ``[CLS]`` pooling.

``dtype=tf.bfloat16`` stores the matmul kernels and biases as bfloat16 and runs the layers' matmuls, attention
and GELU in bfloat16; embeddings, LayerNorms, pooling and the head stay float32 (``--export-precision bf16``).
The float32 rebuild equals the training graph to float rounding (checked at every export and in
tests/test_serving_graph.py). Only encoders built by ``trainer.bert_convert`` (``minilm-l6``, ``tiny-random``)
can be rebuilt; a TF Hub encoder is an opaque SavedModel and is served through the Keras model as trained.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib

import tensorflow as tf

from trainer.bert_convert import MASK_NEGATIVE, BertConfig, variable_shapes

CONFIG_FILE = pathlib.Path("assets.extra") / "bert_config.json"


def encoder_config(encoder_handle: str) -> BertConfig:
    """The BERT config that ``trainer.bert_convert`` stored beside the encoder SavedModel.

    Raises ValueError for encoders not built here (TF Hub handles): they cannot be rebuilt.
    """
    path = pathlib.Path(encoder_handle) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{encoder_handle!r} has no {CONFIG_FILE}: only encoders built by trainer.bert_convert "
                         "(minilm-l6, tiny-random) can be rebuilt for serving; --export-precision bf16 needs one, "
                         "export with fp32 instead")
    fields = {f.name for f in dataclasses.fields(BertConfig)}
    return BertConfig(**{k: v for k, v in json.loads(path.read_text()).items() if k in fields})


class ServingEncoder(tf.Module):
    """Inference-only BERT forward pass over fine-tuned weights (see the module docstring).

    Args:
      config: the architecture (``encoder_config``).
      trained_variables: the fine-tuned encoder's variables, named as ``bert_convert`` names them
        (``bert/layer_0/query/kernel:0``, ...); all must be present with the expected shapes.
      dtype: tf.float32 or tf.bfloat16, the numerics of the layers' matmuls.
    """

    def __init__(self, config: BertConfig, trained_variables, dtype: tf.DType = tf.float32):
        super().__init__(name="serving_encoder")
        if dtype not in (tf.float32, tf.bfloat16):
            raise ValueError(f"dtype={dtype!r} must be float32 or bfloat16")
        self.config, self.dtype = config, dtype
        values = {v.name.split(":")[0].removeprefix("bert/"): v for v in trained_variables}
        expected = variable_shapes(config)
        missing = sorted(set(expected) - set(values))
        unexpected = sorted(set(values) - set(expected))
        if missing or unexpected:
            raise ValueError(f"trained encoder variables do not match a BERT of {config}: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        for name, shape in expected.items():
            if tuple(values[name].shape) != shape:
                raise ValueError(f"{name}: shape {tuple(values[name].shape)} in the trained model, {shape} expected")

        def keep(name, value, as_dtype=tf.float32):
            return tf.Variable(tf.cast(value, as_dtype), trainable=False, name=name)

        scale = 1.0 / math.sqrt(config.hidden_size // config.num_attention_heads)
        with self.name_scope:
            self.word_embeddings = keep("word_embeddings", values["word_embeddings"])
            self.position_embeddings = keep("position_embeddings", values["position_embeddings"])
            self.type_embeddings = keep("type_embeddings", values["type_embeddings"])
            self.embedding_norm = (keep("embeddings/gamma", values["embeddings/gamma"]),
                                   keep("embeddings/beta", values["embeddings/beta"]))
            self.layers = []
            for i in range(config.num_hidden_layers):
                def get(short, part, i=i):
                    return values[f"layer_{i}/{short}/{part}"]

                qkv_kernel = tf.concat([get("query", "kernel") * scale, get("key", "kernel"),
                                        get("value", "kernel")], axis=1)
                qkv_bias = tf.concat([get("query", "bias") * scale, get("key", "bias"), get("value", "bias")], axis=0)
                layer = {"qkv": (keep(f"layer_{i}/qkv/kernel", qkv_kernel, dtype),
                                 keep(f"layer_{i}/qkv/bias", qkv_bias, dtype))}
                for short in ("attention_output", "intermediate", "output"):
                    layer[short] = (keep(f"layer_{i}/{short}/kernel", get(short, "kernel"), dtype),
                                    keep(f"layer_{i}/{short}/bias", get(short, "bias"), dtype))
                for short in ("attention_norm", "output_norm"):
                    layer[short] = (keep(f"layer_{i}/{short}/gamma", get(short, "gamma")),
                                    keep(f"layer_{i}/{short}/beta", get(short, "beta")))
                self.layers.append(layer)
            self.pooler = (keep("pooler/kernel", values["pooler/kernel"]), keep("pooler/bias", values["pooler/bias"]))

    def _norm(self, x, params):
        """float32 LayerNorm of [N, H]; the result in the layers' dtype."""
        x = tf.cast(x, tf.float32)
        mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
        normed = tf.nn.batch_normalization(x, mean, variance, params[1], params[0], self.config.layer_norm_eps)
        return tf.cast(normed, self.dtype)

    def attention_mask(self, input_mask):
        """int [B, S] (1 = token, 0 = padding) → additive [B, 1, 1, S] in the layers' dtype: 0 or MASK_NEGATIVE.

        Its own method so the export's check can be shown to catch a dropped mask (tests/test_export.py).
        """
        return tf.cast((1.0 - tf.cast(input_mask, tf.float32))[:, tf.newaxis, tf.newaxis, :] * MASK_NEGATIVE,
                       self.dtype)

    @staticmethod
    def _dense(x, params):
        return tf.nn.bias_add(tf.matmul(x, params[0]), params[1])

    def forward(self, input_word_ids, input_mask, input_type_ids, *, pooled: bool = False):
        """int32 [B, S] inputs → float32 sequence_output [B, S, H] (and pooled_output [B, H] if ``pooled``)."""
        cfg = self.config
        heads, size = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
        batch, seq = tf.shape(input_word_ids)[0], tf.shape(input_word_ids)[1]
        x = (tf.gather(self.word_embeddings, input_word_ids)
             + tf.gather(self.position_embeddings, tf.range(seq))[tf.newaxis]
             + tf.gather(self.type_embeddings, input_type_ids))
        x = self._norm(tf.reshape(x, [-1, cfg.hidden_size]), self.embedding_norm)  # [B*S, H] from here on
        additive_mask = self.attention_mask(input_mask)
        for layer in self.layers:
            qkv = tf.reshape(self._dense(x, layer["qkv"]), [batch, seq, 3, heads, size])
            qkv = tf.transpose(qkv, [2, 0, 3, 1, 4])  # [3, B, heads, S, size]
            scores = tf.matmul(qkv[0], qkv[1], transpose_b=True) + additive_mask  # scale folded into Q
            context = tf.matmul(tf.nn.softmax(scores, axis=-1), qkv[2])
            context = tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [-1, cfg.hidden_size])
            x = self._norm(tf.cast(x, tf.float32) + tf.cast(self._dense(context, layer["attention_output"]),
                                                            tf.float32), layer["attention_norm"])
            hidden = tf.nn.gelu(self._dense(x, layer["intermediate"]), approximate=False)
            x = self._norm(tf.cast(x, tf.float32) + tf.cast(self._dense(hidden, layer["output"]), tf.float32),
                           layer["output_norm"])
        sequence = tf.reshape(tf.cast(x, tf.float32), [batch, seq, cfg.hidden_size])
        if not pooled:
            return sequence
        return sequence, tf.tanh(tf.matmul(sequence[:, 0], self.pooler[0]) + self.pooler[1])
