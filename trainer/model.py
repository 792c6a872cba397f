"""The classifier: pretrained encoder → pooled representation → Dropout → Dense logits.

Seeded dropout: inside `dropout_seed(seed)` (what `trainer.loop`'s train step does, with a seed derived from the
run seed, the global step and the replica id) a training-mode call draws every dropout mask from that seed with
stateless ops: the encoder's (if it accepts a `dropout_seed` input, as encoders built by `trainer.bert_convert`
do) and the head's. Outside it, or for TF Hub encoders (whose dropout is an internal stateful op that takes no
seed), dropout is Keras'/TensorFlow's usual stateful dropout. Inference (`training=False`) never drops.
"""

from __future__ import annotations

import contextlib
import threading

import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

from trainer.bert_convert import DROPOUT_SEED

INPUT_NAMES = ("input_word_ids", "input_mask", "input_type_ids")
HEAD_NAME = "classifier"
# What each consumer folds into the step's seed: the encoder's sites fold in their own index on top.
ENCODER_STREAM, HEAD_STREAM = 0, 1

# Per thread, because MirroredStrategy runs each replica's step in its own thread.
_current = threading.local()


@contextlib.contextmanager
def dropout_seed(seed):
    """Within this block, training-mode calls of a classifier draw their dropout from `seed` (int64 [2])."""
    previous = getattr(_current, "seed", None)
    _current.seed = tf.cast(seed, tf.int64)
    try:
        yield
    finally:
        _current.seed = previous


def _stream_seed(stream: int):
    seed = getattr(_current, "seed", None)
    return None if seed is None else tf.random.experimental.stateless_fold_in(seed, tf.constant(stream, tf.int64))


def accepts_dropout_seed(func) -> bool:
    """Whether a loaded encoder SavedModel has a `__call__` trace that takes a `dropout_seed` input."""
    restored_call = func.__call__ if callable(func) else None  # a RestoredFunction with its traces
    for concrete in getattr(restored_call, "concrete_functions", ()):
        args = concrete.structured_input_signature[0]
        if args and isinstance(args[0], dict) and DROPOUT_SEED in args[0]:
            return True
    return False


class SeededKerasLayer(hub.KerasLayer):
    """`hub.KerasLayer` that hands the current `dropout_seed` to an encoder that accepts one (training only)."""

    def __init__(self, handle, **kwargs):
        super().__init__(handle, **kwargs)
        self.seeded = accepts_dropout_seed(self._func)

    def call(self, inputs, training=None):
        seed = _stream_seed(ENCODER_STREAM) if self.seeded and training is True and self.trainable else None
        if seed is not None:
            inputs = {**inputs, DROPOUT_SEED: seed}
        return super().call(inputs, training=training)


class SeededDropout(tf_keras.layers.Dropout):
    """Keras Dropout whose mask, inside `dropout_seed`, is stateless dropout of that seed (else Keras' own)."""

    def call(self, inputs, training=None):
        seed = _stream_seed(HEAD_STREAM) if training is True and self.rate > 0 else None
        if seed is None:
            return super().call(inputs, training=training)
        return tf.nn.experimental.stateless_dropout(inputs, rate=self.rate, seed=seed)


class MaskedMeanPooling(tf_keras.layers.Layer):
    """Mean of the token vectors that the mask keeps: how sentence-transformers pretrained MiniLM.

    Args (call):
      sequence_output: float [B, S, H].
      input_mask: int [B, S], 1 for real tokens.
    Returns:
      float [B, H].
    """

    def call(self, sequence_output, input_mask):
        mask = tf.cast(input_mask, sequence_output.dtype)[:, :, tf.newaxis]
        summed = tf.reduce_sum(sequence_output * mask, axis=1)
        count = tf.maximum(tf.reduce_sum(mask, axis=1), tf.cast(1e-9, sequence_output.dtype))
        return summed / count


def build_classifier(
    encoder_handle: str,
    num_classes: int,
    *,
    seq_length: int | None = None,
    pooling: str = "mean",
    dropout: float = 0.1,
    trainable: bool = True,
) -> tf_keras.Model:
    """Builds the fine-tuning model around a TF Hub–style encoder (URL or local SavedModel path).

    Every encoder, online or offline, goes through `hub.KerasLayer` (`SeededKerasLayer` only adds the dropout
    seed, see the module docstring), so the loop, checkpoints and export never depend on which one was chosen. The head is float32 even under a mixed-precision policy, so the logits and
    the loss keep full precision.

    Args:
      encoder_handle: TF Hub handle or path of a reusable SavedModel taking `INPUT_NAMES` int32 [B, S].
      num_classes: width of the logits.
      seq_length: static sequence length of the inputs (None = any).
      pooling: "cls" uses the encoder's `pooled_output` (the seed notebook), "mean" the masked mean of
        `sequence_output`.
      dropout: dropout rate before the dense head.
      trainable: False freezes the encoder (feature extraction).

    Returns:
      A tf_keras Model mapping the dict of `INPUT_NAMES` to float32 logits [B, num_classes].
    """
    if pooling not in ("cls", "mean"):
        raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    inputs = {name: tf_keras.layers.Input(shape=(seq_length,), dtype=tf.int32, name=name) for name in INPUT_NAMES}
    encoder = SeededKerasLayer(encoder_handle, trainable=trainable, name="encoder")
    outputs = encoder(inputs)
    if pooling == "cls":
        pooled = outputs["pooled_output"]
    else:
        pooled = MaskedMeanPooling(name="mean_pooling")(outputs["sequence_output"], inputs["input_mask"])
    pooled = SeededDropout(dropout, name="dropout")(pooled)
    logits = tf_keras.layers.Dense(num_classes, name=HEAD_NAME, dtype="float32")(pooled)
    return tf_keras.Model(inputs=inputs, outputs=logits, name="bertbc_classifier")


def with_any_length(model: tf_keras.Model) -> tf_keras.Model:
    """The same classifier (same layers, same variables) accepting any sequence length: int32 [B, None].

    A functional model built with a static `seq_length` rejects shorter inputs, although every layer here
    works at any length (the encoder slices its position embeddings to the input length; attention and mean
    pooling follow the mask). Serving feeds length-bucketed batches, so the export wraps the trained model.
    """
    inputs = {name: tf_keras.layers.Input(shape=(None,), dtype=tf.int32, name=name) for name in INPUT_NAMES}
    return tf_keras.models.clone_model(model, input_tensors=inputs, clone_function=lambda layer: layer)
