"""Seeded dropout: masks are a function of (run seed, step, replica), in the converted encoder and in the head."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def classifier(tiny_encoder):
    from trainer.model import build_classifier

    return build_classifier(tiny_encoder.encoder_handle, 3, seq_length=16, pooling="mean", dropout=0.3)


def _features(batch: int = 2, seq: int = 16) -> dict[str, tf.Tensor]:
    ids = tf.random.stateless_uniform([batch, seq], seed=[0, 1], minval=1000, maxval=5000, dtype=tf.int32)
    return {"input_word_ids": ids, "input_mask": tf.ones_like(ids), "input_type_ids": tf.zeros_like(ids)}


def _train_logits(model, seed):
    from trainer.model import dropout_seed

    with dropout_seed(tf.constant(seed, tf.int64)):
        return model(_features(), training=True).numpy()


def test_converted_encoder_takes_a_seed_and_tf_hub_style_calls_still_work(classifier):
    encoder = classifier.get_layer("encoder")
    assert encoder.seeded, "the converted encoder must accept dropout_seed"
    plain = encoder(_features(), training=False)["sequence_output"]  # the 3-input contract, unchanged
    again = encoder(_features(), training=False)["sequence_output"]
    np.testing.assert_array_equal(plain.numpy(), again.numpy())
    assert encoder(_features(), training=True)["sequence_output"].shape == plain.shape  # unseeded training call


@pytest.mark.parametrize("seed_a, seed_b, same", [
    ([42, 0], [42, 0], True),   # same seed: same masks, in a new call
    ([42, 0], [7, 0], False),   # another --seed
    ([42, 3], [42, 4], False),  # another step (or replica): the fold-in differs
])
def test_masks_are_a_function_of_the_seed(classifier, seed_a, seed_b, same):
    a, b = _train_logits(classifier, seed_a), _train_logits(classifier, seed_b)
    assert np.array_equal(a, b) == same


def test_head_and_encoder_both_draw_from_the_seed(classifier):
    """The head's dropout alone (encoder frozen at inference) must also follow the seed."""
    from trainer.model import HEAD_STREAM, SeededDropout, dropout_seed

    layer = SeededDropout(0.5)
    x = tf.ones([4, 64])
    with dropout_seed(tf.constant([1, 2], tf.int64)):
        first, second = layer(x, training=True).numpy(), layer(x, training=True).numpy()
    with dropout_seed(tf.constant([1, 3], tf.int64)):
        other = layer(x, training=True).numpy()
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other) and 0 < (first == 0).mean() < 1
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
    assert HEAD_STREAM != 0


def test_inference_has_no_dropout_even_inside_a_seed_block(classifier):
    from trainer.model import dropout_seed

    reference = classifier(_features(), training=False).numpy()
    with dropout_seed(tf.constant([1, 2], tf.int64)):
        inside = classifier(_features(), training=False).numpy()
    np.testing.assert_array_equal(reference, inside)


# Runs in its own process: logical CPUs must be configured before TensorFlow initialises its devices.
_REPLICAS_SCRIPT = r"""
import json, sys
import tensorflow as tf
import tf_keras
from trainer.distributed import make_strategy
from trainer.loop import replica_dropout_seed
from trainer.model import build_classifier, dropout_seed

encoder, run_seeds = sys.argv[1], [int(s) for s in sys.argv[2:]]
strategy = make_strategy("mirrored", logical_cpus=2)
tf_keras.utils.set_random_seed(0)  # the head's initial weights
with strategy.scope():
    model = build_classifier(encoder, 3, seq_length=16, pooling="mean", dropout=0.3)
ids = tf.random.stateless_uniform([2, 16], seed=[0, 1], minval=1000, maxval=5000, dtype=tf.int32)
features = {"input_word_ids": ids, "input_mask": tf.ones_like(ids), "input_type_ids": tf.zeros_like(ids)}

@tf.function
def step(run_seed, step_index):
    def replica():
        context = tf.distribute.get_replica_context()
        with dropout_seed(replica_dropout_seed(run_seed, step_index, context.replica_id_in_sync_group)):
            return model(features, training=True)  # every replica gets the SAME inputs
    return strategy.experimental_local_results(strategy.run(replica))

out = [[[r.numpy().tolist() for r in step(run_seed, tf.constant(s, tf.int64))] for s in (0, 1)]
       for run_seed in run_seeds]
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "logits": out}))
"""


def _replica_logits(encoder: str, *run_seeds: int) -> np.ndarray:
    done = subprocess.run([sys.executable, "-c", _REPLICAS_SCRIPT, encoder, *map(str, run_seeds)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    return np.array(result["logits"])  # [run seed, step, replica, batch, classes]


def test_replicas_steps_and_seeds_draw_different_masks(tiny_encoder):
    logits, other_seed = _replica_logits(tiny_encoder.encoder_handle, 42, 7)
    assert not np.array_equal(logits[0, 0], logits[0, 1]), "both replicas drew the same dropout masks"
    assert not np.array_equal(logits[0, 0], logits[1, 0]), "two steps drew the same dropout masks"
    assert not np.array_equal(logits[0, 0], other_seed[0, 0]), "--seed does not change the dropout masks"
    (again,) = _replica_logits(tiny_encoder.encoder_handle, 42)
    np.testing.assert_array_equal(logits, again)  # and a new process draws them again exactly


def test_an_encoder_without_a_seed_input_still_trains(tmp_path):
    """TF Hub encoders take no dropout seed: detected, they keep their own dropout and the head is still seeded."""
    from trainer import bert_convert
    from trainer.model import build_classifier, dropout_seed

    config = bert_convert.BertConfig(vocab_size=6000, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16)
    root = bert_convert._HubEncoder(bert_convert.BertEncoder(config, bert_convert.random_weights(config)))
    for training in (False, True):  # the three-input contract only, like a TF Hub encoder
        root.__call__.get_concrete_function(bert_convert._input_spec(), training=training)
    tf.saved_model.save(root, str(tmp_path / "hub_like"))
    model = build_classifier(str(tmp_path / "hub_like"), 3, seq_length=16, pooling="mean", dropout=0.3)
    assert model.get_layer("encoder").seeded is False
    with dropout_seed(tf.constant([1, 2], tf.int64)):
        logits = model(_features(), training=True)
    assert logits.shape == (2, 3)
