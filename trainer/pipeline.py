"""tf.data input pipelines: raw text in, tokenized batches out, prepared on the CPU while the device trains."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
# Tokenized validation windows are cached up to this size (3 int32 features a token, the worst case of every
# document in every window); BBC's 445 documents in 4 windows of 256 tokens take 5.5 MB.
EVAL_CACHE_BYTES = 512 << 20


def eval_cache_fits(documents: int, max_windows: int, seq_length: int) -> bool:
    """Whether the tokenized validation windows of `documents` fit `EVAL_CACHE_BYTES` (else: tokenized per pass)."""
    return documents * max_windows * seq_length * 3 * 4 <= EVAL_CACHE_BYTES


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
    return _tokenized_batches(ds, preprocess, batch_size=batch_size, parallel=parallel, skip_batches=skip_batches,
                              worker_slice=worker_slice)


def make_stream_train_dataset(
    stream: Iterable[tuple[bytes, int | tuple[int, ...]]],
    preprocess: Callable[[tf.Tensor], dict[str, tf.Tensor]],
    *,
    rows: int,
    num_classes: int,
    multi_label: bool,
    batch_size: int,
    seed: int,
    shuffle_buffer: int,
    parallel: bool = True,
    skip_batches: int = 0,
    worker_slice: tuple[int, int] | None = None,
) -> tf.data.Dataset:
    """Training batches read from a stream of (text, label) rows (`trainer.own_data.TrainStream`), one pass an epoch.

    Rows are shuffled in a seeded buffer of `min(shuffle_buffer, rows)`: a corpus that fits the buffer gets exactly
    the permutation of `make_train_dataset` (same seed, same order in), so the same model; a larger one is mixed
    within the window. Everything after the shuffle is shared with `make_train_dataset`.

    Args:
      stream: iterable of (UTF-8 bytes, class id or tuple of class ids); iterated once per dataset iteration.
      rows: how many rows the stream yields (sizes the buffer).
      num_classes, multi_label: the label encoding (a multi-label row becomes a multi-hot float32 [C]).
      shuffle_buffer: at most this many rows are held for shuffling (raw text, in TensorFlow's memory).
      Others: as for `make_train_dataset`.
    """
    def rows_of_stream():
        for text, label in stream:
            if multi_label:
                hot = np.zeros(num_classes, np.float32)
                hot[list(label)] = 1.0
                yield text, hot
            else:
                yield text, label

    target = tf.TensorSpec([num_classes], tf.float32) if multi_label else tf.TensorSpec([], tf.int32)
    ds = tf.data.Dataset.from_generator(rows_of_stream, output_signature=(tf.TensorSpec([], tf.string), target))
    ds = ds.shuffle(max(1, min(shuffle_buffer, rows)), seed=seed, reshuffle_each_iteration=True)
    return _tokenized_batches(ds, preprocess, batch_size=batch_size, parallel=parallel, skip_batches=skip_batches,
                              worker_slice=worker_slice)


def _tokenized_batches(ds: tf.data.Dataset, preprocess, *, batch_size: int, parallel: bool, skip_batches: int,
                       worker_slice: tuple[int, int] | None) -> tf.data.Dataset:
    """Shuffled (text, target) rows -> batches, the resumed epoch's first batches skipped, tokenized, prefetched."""
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
    # Explicit: tf.data's FILE policy cannot apply to in-memory texts nor to a Python stream (FILE sharding of a
    # streamed corpus is trainer/sharding.py, through distribute_datasets_from_function, which ignores this).
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    ds = ds.with_options(options)
    return ds.prefetch(AUTOTUNE) if parallel else ds


def make_eval_dataset(
    texts: Sequence[bytes],
    windowed: Callable[[tf.Tensor], tuple[dict[str, tf.Tensor], tf.Tensor]],
    *,
    batch_size: int,
    cache: bool = True,
) -> tf.data.Dataset:
    """Validation windows in corpus order, tokenized once and cached (validation never changes).

    Args:
      texts: the validation documents.
      windowed: strings [B] -> (dict of int32 [W, S], doc_index int32 [W] into the B strings): each document
        cut into its windows (`Preprocessor.windowed` with `bucket=False`; one window per document = the head).
      batch_size: windows per batch.
      cache: keep the tokenized windows in memory after the first pass; False re-tokenizes them every validation
        (a large validation split: 200,000 documents in 4 windows of 256 tokens would hold 2.5 GB), and reads the
        texts from `texts` through a generator instead of copying them into the dataset graph as a constant.

    Returns:
      A dataset of `(features: dict of int32 [b, S], doc_ids: int32 [b])`, one row per window; `doc_ids` index
      `texts`, so a document's logits can be averaged over its windows afterwards.
    """
    if cache:
        ds = tf.data.Dataset.from_tensor_slices((list(texts), tf.range(len(texts), dtype=tf.int32)))
    else:
        ds = tf.data.Dataset.from_generator(lambda: ((t, i) for i, t in enumerate(texts)), output_signature=(
            tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int32)))

    def to_windows(t, ids):
        features, index = windowed(t)
        return features, tf.gather(ids, index)

    ds = ds.batch(batch_size).map(to_windows, num_parallel_calls=AUTOTUNE).unbatch().batch(batch_size)
    return (ds.cache() if cache else ds).prefetch(AUTOTUNE)
