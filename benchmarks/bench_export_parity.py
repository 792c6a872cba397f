"""Parity of the exported serving graph: length buckets vs full-length packing, and bf16 vs fp32.

On the seed split's 445 validation documents (``load_corpus(..., validation_split=0.2, seed=42)``) and on
their headlines (the first line of each BBC file, mostly <= 32 word pieces, so the smallest bucket is used):

1. **Buckets vs full length** (fp32 export): every text is sent alone through ``serving_default`` (packed to
   its bucket, as a client request would be) and compared with the same export's ``serve_full_length``
   (every window packed to the trained length, what the export did before buckets). Needs identical labels
   and probabilities within 1e-4.
2. **bf16 vs fp32** (with ``--bf16-model-base-path``): label agreement of the two exports' ``serving_default``
   on the same documents; needs >= 99.5 %. Also prints each export's accuracy against the true labels.
3. **Against another export of the same run** (with ``--reference-model-base-path``, e.g. one made by an
   older bertbc whose graph ran the trained Keras model instead of the rebuilt encoder of
   ``trainer/serving_encoder.py``, with the same ``--serve-windows``): ``serving_default`` answers text by
   text, probabilities within 1e-4 and identical labels.

Usage::

    .venv/bin/python benchmarks/bench_export_parity.py models/bertbc [--bf16-model-base-path models/bertbc-bf16]
        [--data-dir ../shared/data/bbc]

Exits 1 if a requirement fails.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_serving import latest_version  # noqa: E402
from machine import cpu_description  # noqa: E402

INPUT_NAMES = ("input_word_ids", "input_mask", "input_type_ids")
PROB_TOLERANCE = 1e-4
BF16_MIN_AGREEMENT = 0.995


def serve_one_by_one(loaded, texts) -> tuple[np.ndarray, collections.Counter]:
    """Probabilities [N, C] from ``serving_default``, one request per text; and the packed lengths used."""
    import tensorflow as tf

    serve = loaded.signatures["serving_default"]
    bucketed = getattr(loaded.preprocessor, "bucketed", None)
    out, lengths = [], collections.Counter()
    for text in texts:
        batch = tf.constant([text])
        out.append(serve(text=batch)["probabilities"].numpy()[0])
        if bucketed is not None:
            lengths[int(bucketed(batch)["input_mask"].shape[1])] += 1
    return np.stack(out), lengths


def full_length(loaded, texts, batch_size: int = 16) -> np.ndarray:
    """Probabilities [N, C] with every text (every window) packed to the trained length: the export's
    ``serve_full_length``, or for exports made before it the head's full-length packing + classify_features."""
    import tensorflow as tf

    if hasattr(loaded, "serve_full_length"):
        return np.concatenate([loaded.serve_full_length(tf.constant(texts[i:i + batch_size]))["probabilities"].numpy()
                               for i in range(0, len(texts), batch_size)])
    out = []  # a head-only export made before serve_full_length existed
    for i in range(0, len(texts), batch_size):
        features = loaded.preprocessor(tf.constant(texts[i:i + batch_size]))
        logits = loaded.classify_features(*(features[name] for name in INPUT_NAMES))
        out.append(tf.nn.softmax(logits, axis=-1).numpy())
    return np.concatenate(out)


def same_answers(got: np.ndarray, want: np.ndarray) -> tuple[int, float, bool]:
    """(labels identical, max |probability difference|, whether both meet the parity requirement)."""
    same = int((got.argmax(1) == want.argmax(1)).sum())
    diff = float(np.abs(got - want).max())
    return same, diff, same == len(got) and diff <= PROB_TOLERANCE


def headline(doc: bytes) -> bytes:
    return doc.strip().split(b"\n", 1)[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_base_path", type=pathlib.Path, nargs="?", default=pathlib.Path("models/bertbc"),
                   help="fp32 export's base path (newest version is used; default models/bertbc)")
    p.add_argument("--bf16-model-base-path", type=pathlib.Path, default=None,
                   help="the same run exported with --export-precision bf16 (adds the bf16 agreement check)")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "bbc"),
                   help="BBC corpus folder (class folders of .txt; default ../shared/data/bbc)")
    p.add_argument("--reference-model-base-path", type=pathlib.Path, default=None,
                   help="another fp32 export of the same run (its newest version) to compare with (check 3)")
    args = p.parse_args(argv)

    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the TF-Text ops)

    from trainer.data import load_corpus

    corpus = load_corpus(args.data_dir, validation_split=0.2, seed=42)
    truth = np.array(corpus.val_labels)
    sets = {"documents": list(corpus.val_texts), "headlines": [headline(t) for t in corpus.val_texts]}
    fp32_dir = latest_version(args.model_base_path)
    fp32 = tf.saved_model.load(str(fp32_dir))
    print(f"CPU: {cpu_description()}\nfp32 export: {fp32_dir}")
    ok = True
    served = {}
    for name, texts in sets.items():
        started = time.perf_counter()
        bucketed, lengths = serve_one_by_one(fp32, texts)
        reference = full_length(fp32, texts)
        served[name] = bucketed
        same, diff, good = same_answers(bucketed, reference)
        ok &= good
        print(f"\n{name} ({len(texts)}): buckets vs full-length packing: labels identical {same}/{len(texts)}, "
              f"max |probability difference| {diff:.2e} (limit {PROB_TOLERANCE:g}) -> {'OK' if good else 'FAIL'}")
        print(f"  packed lengths used: {dict(sorted(lengths.items()))}; accuracy "
              f"{(bucketed.argmax(1) == truth).mean():.4f} ({time.perf_counter() - started:.0f} s)")
    if args.bf16_model_base_path:
        bf16_dir = latest_version(args.bf16_model_base_path)
        bf16 = tf.saved_model.load(str(bf16_dir))
        print(f"\nbf16 export: {bf16_dir}")
        for name, texts in sets.items():
            got, _ = serve_one_by_one(bf16, texts)
            agree = float((got.argmax(1) == served[name].argmax(1)).mean())
            good = name != "documents" or agree >= BF16_MIN_AGREEMENT
            ok &= good
            print(f"{name} ({len(texts)}): bf16 vs fp32 labels agree {agree:.2%} "
                  f"({int((got.argmax(1) != served[name].argmax(1)).sum())} differ; need >= "
                  f"{BF16_MIN_AGREEMENT:.1%} on documents), max |probability difference| "
                  f"{float(np.abs(got - served[name]).max()):.2e}; accuracy bf16 {(got.argmax(1) == truth).mean():.4f}"
                  f" vs fp32 {(served[name].argmax(1) == truth).mean():.4f} -> {'OK' if good else 'FAIL'}")
    if args.reference_model_base_path:
        reference_dir = latest_version(args.reference_model_base_path)
        reference = tf.saved_model.load(str(reference_dir))
        print(f"\nreference export: {reference_dir}")
        for name, texts in sets.items():
            same, diff, good = same_answers(served[name], serve_one_by_one(reference, texts)[0])
            ok &= good
            print(f"{name} ({len(texts)}): fp32 export vs reference, serving_default: labels identical {same}/"
                  f"{len(texts)}, max |probability difference| {diff:.2e} -> {'OK' if good else 'FAIL'}")
    print("\nPARITY OK" if ok else "\nPARITY FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
