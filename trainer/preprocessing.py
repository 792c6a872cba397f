"""The ONE preprocessing definition: raw text bytes → BERT encoder inputs, used by tf.data AND the export.

Everything is TF graph code (core ops + tensorflow_text ops from the loaded preprocessor), so the exported
``serving_default`` tokenizes exactly like training did and TF Serving needs no Python.

Steps of ``Preprocessor.__call__``:
1. ``repair_utf8``: rows that are not valid UTF-8 (BBC has Latin-1 files: ``b"\\xa315.8m"``) are decoded as
   ISO-8859-1, so "£15.8m" stays "£ 15 . 8 ##m" instead of becoming "[UNK] . 8 ##m". Valid rows are untouched.
2. ``tokenize`` of the hub-style preprocessor → wordpieces, then words are flattened.
3. truncation to ``seq_length - 2`` wordpieces: "head" keeps the first ones (like the seed notebook);
   "head_tail" keeps the first quarter and the last three quarters of the budget (31 + 95 at seq 128) —
   Sun et al. 2019 ("How to Fine-Tune BERT for Text Classification?") found head+tail best on long documents,
   and news articles restate their point at both ends.
4. ``bert_pack_inputs`` → ``[CLS] … [SEP]``, padding, int32 [B, seq_length].

Serving adds one step (``Preprocessor.bucketed``): the packed batch is cut to the smallest of a few bucket
lengths (32, 64, 128, … capped at ``seq_length``) that holds its longest row, so a headline is encoded at 32
tokens, not 256. The cut removes only padding ([PAD] ids with mask 0), which the encoder's attention mask and
the masked mean pooling already ignore, so the classification is the same (up to float rounding). Training keeps
the fixed length (``__call__``): its batches are full-length articles anyway, and fixed shapes trace once.
"""

from __future__ import annotations

import itertools

import numpy as np
import tensorflow as tf
import tensorflow_hub as hub
import tensorflow_text  # noqa: F401  (registers the ops the preprocessor SavedModel uses)

from trainer.windows import split_windows

TRUNCATIONS = ("head", "head_tail")
SMALLEST_BUCKET = 32


def bucket_lengths(seq_length: int, smallest: int = SMALLEST_BUCKET) -> tuple[int, ...]:
    """The packed lengths serving may use: ``smallest`` doubled while below ``seq_length``, then ``seq_length``.

    Few distinct lengths keep oneDNN's per-shape kernel caches and the warm-up small; doubling wastes at most
    half of a bucket on padding. Example: ``bucket_lengths(256) == (32, 64, 128, 256)``,
    ``bucket_lengths(48) == (32, 48)``, ``bucket_lengths(16) == (16,)``.
    """
    if seq_length < 1 or smallest < 1:
        raise ValueError(f"seq_length={seq_length} and smallest={smallest} must be >= 1")
    lengths = []
    length = smallest
    while length < seq_length:
        lengths.append(length)
        length *= 2
    return (*lengths, seq_length)


def trim_to_bucket(features: dict[str, tf.Tensor], buckets: tuple[int, ...]) -> dict[str, tf.Tensor]:
    """Cuts packed inputs to the smallest bucket that holds the batch's longest row (padding only).

    Args:
        features: input_word_ids / input_mask / input_type_ids, int32 [B, buckets[-1]], packed left-aligned
            (real tokens first, mask 1, then padding, mask 0).
        buckets: increasing lengths, the last one the packed length (see ``bucket_lengths``).

    Returns:
        The same keys, int32 [B, L] with L in ``buckets``; an empty batch gets ``buckets[0]``.
    """
    needed = tf.reduce_max(tf.reduce_sum(features["input_mask"], axis=1))  # empty batch: int32 min
    table = tf.constant(buckets, tf.int32)
    length = tf.gather(table, tf.reduce_sum(tf.cast(table < needed, tf.int32)))  # first bucket >= needed
    return {name: value[:, :length] for name, value in features.items()}


def repair_utf8(texts: tf.Tensor) -> tf.Tensor:
    """string [B] → string [B], every element valid UTF-8.

    A row is valid iff transcoding it with ``errors="replace"`` changes nothing; other rows are read as
    ISO-8859-1 (ICU's built-in, table-free converter, so also available inside TF Serving). Uses only the core
    ``UnicodeTranscode`` op; never raises on bad bytes.
    """
    replaced = tf.strings.unicode_transcode(texts, input_encoding="UTF-8", output_encoding="UTF-8",
                                            errors="replace", replacement_char=0xFFFD)
    latin1 = tf.strings.unicode_transcode(texts, input_encoding="ISO-8859-1", output_encoding="UTF-8",
                                          errors="replace", replacement_char=0xFFFD)
    return tf.where(tf.equal(replaced, texts), texts, latin1)


def truncate(tokens: tf.RaggedTensor, budget: int, truncation: str = "head") -> tf.RaggedTensor:
    """Keeps at most ``budget`` tokens per row.

    Args:
        tokens: int RaggedTensor [B, (T)].
        budget: tokens to keep (``seq_length - 2`` leaves room for [CLS] and [SEP]).
        truncation: "head" (first ``budget``) or "head_tail" (first ``budget // 4`` + last ``budget - budget // 4``).

    Returns:
        int RaggedTensor [B, (min(T, budget))], order preserved.
    """
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation={truncation!r} must be one of {TRUNCATIONS}")
    if budget < 1:
        raise ValueError(f"budget={budget} must be >= 1")
    lengths = tokens.row_lengths()
    positions = tf.ragged.range(lengths)                   # [B, (T)] int64
    if truncation == "head":
        keep = positions < budget
    else:
        head = budget // 4
        tail = budget - head
        row_len = tf.expand_dims(lengths, 1)              # broadcast per row
        keep = (positions < head) | (positions >= row_len - tail)
    return tf.ragged.boolean_mask(tokens, keep)


def _as_words(tokens: tf.RaggedTensor) -> tf.RaggedTensor:
    """[B, (T)] → [B, (T), (1)]: the [B, words, wordpieces] shape ``bert_pack_inputs`` expects."""
    ones = tf.ones_like(tokens.flat_values, dtype=tokens.row_splits.dtype)
    return tf.RaggedTensor.from_nested_row_lengths(tokens.flat_values, [tokens.row_lengths(), ones])


class Preprocessor(tf.Module):
    """Raw strings → encoder inputs. Used by tf.data AND inside the exported model (no skew).

    Args:
        preprocess_handle: TF Hub-style preprocessor (URL or path) with ``tokenize`` and ``bert_pack_inputs``.
        seq_length: packed length (>= 3).
        truncation: "head" or "head_tail" (see module docstring).
    """

    def __init__(self, preprocess_handle: str, seq_length: int = 128, truncation: str = "head"):
        super().__init__(name="preprocessor")
        if truncation not in TRUNCATIONS:
            raise ValueError(f"truncation={truncation!r} must be one of {TRUNCATIONS}")
        if seq_length < 3:
            raise ValueError(f"seq_length={seq_length} must be >= 3")
        self.preprocess = hub.load(preprocess_handle)  # tracked: exports keep its vocab table and assets
        self.seq_length = seq_length
        self.truncation = truncation

    def wordpieces(self, texts: tf.Tensor) -> tf.RaggedTensor:
        """string [B] → int32 RaggedTensor [B, (wordpieces)], untruncated (UTF-8 repaired first)."""
        tokens = self.preprocess.tokenize(repair_utf8(texts))
        return tokens.merge_dims(-2, -1)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, texts):
        """texts: string [B] → dict input_word_ids / input_mask / input_type_ids, each int32 [B, seq_length]."""
        return self._pack(truncate(self.wordpieces(texts), self.seq_length - 2, self.truncation))

    def _pack(self, tokens: tf.RaggedTensor) -> dict[str, tf.Tensor]:
        """int RaggedTensor [R, (<= seq_length - 2)] → ``[CLS] tokens [SEP]`` padded: dict of int32 [R, seq_length]."""
        # seq_length as a Python int keyword: the calling convention of TF Hub's own preprocessors.
        packed = self.preprocess.bert_pack_inputs([_as_words(tf.cast(tokens, tf.int32))],
                                                  seq_length=self.seq_length)
        rows = tokens.nrows(out_type=tf.int32)
        return {k: tf.ensure_shape(tf.reshape(tf.cast(packed[k], tf.int32), [rows, self.seq_length]),
                                   [None, self.seq_length])
                for k in ("input_word_ids", "input_mask", "input_type_ids")}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def bucketed(self, texts):
        """texts: string [B] → the ``__call__`` dict cut to int32 [B, L], L = the batch's bucket (serving).

        Under TF Serving's server-side batching the strings of several requests are concatenated before the
        graph runs, so the bucket is chosen per merged batch: its longest text decides for all.
        """
        return trim_to_bucket(self(texts), bucket_lengths(self.seq_length))

    def windowed(self, texts: tf.Tensor, *, max_windows: int, overlap: int,
                 bucket: bool = True) -> tuple[dict, tf.Tensor]:
        """texts: string [B] → (dict of int32 [W, L], doc_index int32 [W]): the whole text in windows.

        Each document's word pieces are cut into at most ``max_windows`` windows of ``seq_length - 2``
        (``trainer.windows``), each packed like a truncated document, and (``bucket``) the batch is cut to its
        bucket as in ``bucketed``; ``bucket=False`` keeps L = seq_length (validation batches windows of several
        calls together). ``max_windows=1`` is one window per document cut by ``truncation`` (head or head+tail,
        exactly like ``__call__``), so validation, training and serving read the same tokens. Used inside graphs.
        """
        tokens = tf.cast(self.wordpieces(texts), tf.int64)
        if max_windows == 1:
            windows = truncate(tokens, self.seq_length - 2, self.truncation)
            doc_index = tf.range(tokens.nrows(out_type=tf.int32))
        else:
            windows, doc_index = split_windows(tokens, budget=self.seq_length - 2, overlap=overlap,
                                               max_windows=max_windows)
        features = self._pack(windows)
        if bucket:
            features = trim_to_bucket(features, bucket_lengths(self.seq_length))
        return features, doc_index


def token_lengths(preprocess_handle: str, texts, batch_size: int = 64) -> np.ndarray:
    """Wordpiece count per document, untruncated and without [CLS]/[SEP] → int64 [N] (for data analysis).

    Args:
        preprocess_handle: TF Hub-style preprocessor (URL or path).
        texts: sequence of bytes/str documents.
        batch_size: documents tokenized per call.
    """
    pre = Preprocessor(preprocess_handle)
    count = tf.function(lambda t: pre.wordpieces(t).row_lengths(),
                        input_signature=[tf.TensorSpec([None], tf.string)])
    texts = list(texts)
    out = [count(tf.constant(texts[i:i + batch_size], tf.string)).numpy()
           for i in range(0, len(texts), batch_size)]
    return np.concatenate(out).astype(np.int64) if out else np.zeros([0], np.int64)


def length_summary(preprocess_handle: str, texts, seq_length: int, sample: int = 5000,
                   count: int | None = None) -> dict:
    """Word-piece length percentiles of (an evenly spaced sample of at most `sample` of) `texts`, and the share
    longer than fits in one `seq_length` window ([CLS] and [SEP] included): what training truncates.

    `texts` may be a stream (then `count` says how many it yields): only the sample is held."""
    if count is None:
        texts = list(texts)
        count = len(texts)
    step = max(1, -(-count // sample))
    lengths = token_lengths(preprocess_handle, list(itertools.islice(texts, 0, None, step)))
    if lengths.size == 0:
        return {"docs": 0}
    p = np.percentile(lengths, [50, 90, 99])
    return {"docs": int(lengths.size), "p50": int(p[0]), "p90": int(p[1]), "p99": int(p[2]),
            "max": int(lengths.max()), "share_truncated": round(float(np.mean(lengths > seq_length - 2)), 4)}

