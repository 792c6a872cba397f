"""tf.data input pipelines: raw text in, tokenized batches out, prepared on the CPU while the device trains."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
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
    skip_batches: int = 0,
    worker_slice: tuple[int, int] | None = None,
) -> tf.data.Dataset:
    """Training batches: raw text cached in memory, reshuffled every epoch, tokenized per batch.

    Tokenizing after shuffling keeps each epoch's batches fresh, and `map(num_parallel_calls=AUTOTUNE)` +
    `prefetch(AUTOTUNE)` let the CPU tokenize batch k+1 while the accelerator trains batch k.

    Args:
      texts: raw document bytes (invalid UTF-8 allowed: the preprocessing repairs it in-graph).
      labels: class ids, same length as `texts`; or, for a multi-label model, multi-hot float32 [N, C]
        (`trainer.multilabel.multi_hot`).
      preprocess: strings [B] -> dict of int32 [B, S] (the shared `trainer.preprocessing.Preprocessor`).
      batch_size: global batch size (split across replicas by tf.distribute).
      seed: shuffle seed; the order differs per epoch but is reproducible per run.
      parallel: False gives a sequential pipeline with no prefetch (for the pipeline benchmark only).
      skip_batches: leave out this many batches at the start (a run resumed mid-epoch); they are dropped before
        tokenizing, and the rest of the epoch is exactly what an uninterrupted iteration would give.
      worker_slice: (workers, this worker's index) under MultiWorkerMirroredStrategy with one replica per
        worker: tf.distribute (DATA sharding) gives worker i rows [i*B/N, (i+1)*B/N) of each global batch,
        so only those are tokenized here (`trainer.distributed.input_slice`); None tokenizes every row.

    Returns:
      A dataset of `(features: dict[str, int32 [B, S]], labels: int32 [B] or float32 [B, C])`.
    """
    if isinstance(labels, np.ndarray) and labels.ndim == 2:
        targets = tf.constant(labels, tf.float32)
    else:
        targets = tf.constant(list(labels), tf.int32)
    ds = tf.data.Dataset.from_tensor_slices((list(texts), targets)).cache()
    ds = ds.shuffle(len(texts), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=False)
    if skip_batches:
        ds = ds.skip(skip_batches)
    if worker_slice is not None:  # multi-worker: tokenize only the rows tf.distribute hands this worker
        num_workers, index = worker_slice
        own = batch_size // num_workers

        def preprocess(t, tokenize=preprocess):  # other workers' rows become "" (costs nothing to tokenize)
            return tokenize(tf.where(tf.range(tf.shape(t)[0]) // own == index, t, tf.zeros_like(t)))
    ds = ds.map(lambda t, y: (preprocess(t), y), num_parallel_calls=AUTOTUNE if parallel else None,
                deterministic=True)
    options = tf.data.Options()  # explicit: sharding by FILE cannot apply to in-memory texts
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    ds = ds.with_options(options)
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
