"""tf.data input pipelines: raw text in, tokenized batches out, prepared on the CPU while the device trains."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def make_train_dataset(
    texts: Sequence[bytes],
    labels: Sequence[int],
    preprocess: Callable[[tf.Tensor], dict[str, tf.Tensor]],
    *,
    batch_size: int,
    seed: int,
    parallel: bool = True,
) -> tf.data.Dataset:
    """Training batches: raw text cached in memory, reshuffled every epoch, tokenized per batch.

    Tokenizing after shuffling keeps each epoch's batches fresh, and `map(num_parallel_calls=AUTOTUNE)` +
    `prefetch(AUTOTUNE)` let the CPU tokenize batch k+1 while the accelerator trains batch k.

    Args:
      texts: raw document bytes (invalid UTF-8 allowed: the preprocessing repairs it in-graph).
      labels: class ids, same length as `texts`.
      preprocess: strings [B] -> dict of int32 [B, S] (the shared `trainer.preprocessing.Preprocessor`).
      batch_size: global batch size (split across replicas by tf.distribute).
      seed: shuffle seed; the order differs per epoch but is reproducible per run.
      parallel: False gives a sequential pipeline with no prefetch (for the pipeline benchmark only).

    Returns:
      A dataset of `(features: dict[str, int32 [B, S]], labels: int32 [B])`.
    """
    ds = tf.data.Dataset.from_tensor_slices((list(texts), tf.constant(list(labels), tf.int32))).cache()
    ds = ds.shuffle(len(texts), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=False)
    ds = ds.map(lambda t, y: (preprocess(t), y), num_parallel_calls=AUTOTUNE if parallel else None,
                deterministic=True)
    return ds.prefetch(AUTOTUNE) if parallel else ds


def make_eval_dataset(
    texts: Sequence[bytes],
    windowed: Callable[[tf.Tensor], tuple[dict[str, tf.Tensor], tf.Tensor]],
    *,
    batch_size: int,
) -> tf.data.Dataset:
    """Validation windows in corpus order, tokenized once and cached (validation never changes).

    Args:
      texts: the validation documents.
      windowed: strings [B] -> (dict of int32 [W, S], doc_index int32 [W] into the B strings): each document
        cut into its windows (`Preprocessor.windowed` with `bucket=False`; one window per document = the head).
      batch_size: windows per batch.

    Returns:
      A dataset of `(features: dict of int32 [b, S], doc_ids: int32 [b])`, one row per window; `doc_ids` index
      `texts`, so a document's logits can be averaged over its windows afterwards.
    """
    ds = tf.data.Dataset.from_tensor_slices((list(texts), tf.range(len(texts), dtype=tf.int32)))

    def to_windows(t, ids):
        features, index = windowed(t)
        return features, tf.gather(ids, index)

    ds = ds.batch(batch_size).map(to_windows, num_parallel_calls=AUTOTUNE).unbatch().batch(batch_size)
    return ds.cache().prefetch(AUTOTUNE)
