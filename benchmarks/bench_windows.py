"""`make bench-windows`: the trained model read over the whole article vs its head only, on the seed split.

The cheap experiment of issue 14: ONE trained run (the newest finished run under --checkpoint-dir, or --run),
its best checkpoint evaluated through the serving graph (`ServingModule.serve`, raw text in) with:
  head         head truncation, as trained (the exported default)
  head_tail    first quarter + last three quarters of the budget, at inference only
  windows-N    the whole article in up to N windows of --seq-length, logits averaged (trainer/windows.py)
Printed per variant: accuracy on all validation documents, on the long ones (> 512 word pieces), on those with
no byte-identical copy in train, and the cost per document (ms, this machine, one process, batch 16).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from machine import machine_line  # noqa: E402

VARIANTS = ("head", "head_tail", "windows-2", "windows-3", "windows-4", "windows-8")
LONG = 512


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint-dir", default="checkpoints", help="runs root (default %(default)s)")
    p.add_argument("--run", default=None, help="run folder name (default: the newest finished run)")
    p.add_argument("--data-dir", default=None, help="corpus (default: the run's own --data-dir)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), help="default: %(default)s")
    p.add_argument("--overlap", type=int, default=64, help="window overlap in word pieces (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="documents per serve call (default %(default)s)")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    args = p.parse_args()

    import tensorflow as tf

    from trainer import encoders, run
    from trainer.checkpoints import best_checkpoint_path, make_state
    from trainer.config import TrainConfig
    from trainer.export import ServingModule
    from trainer.model import build_classifier
    from trainer.preprocessing import Preprocessor

    name, meta = run.run_to_export(TrainConfig(checkpoint_dir=args.checkpoint_dir, run_name=args.run))
    cfg = run.export_config(TrainConfig(checkpoint_dir=args.checkpoint_dir, data_dir=args.data_dir),
                            meta["config"], frozenset({"data_dir"} if args.data_dir else ()), name)
    corpus = run.load_data(cfg)
    spec = encoders.resolve_encoder(cfg.encoder, encoder_handle=cfg.encoder_handle,
                                    preprocess_handle=cfg.preprocess_handle, cache_dir=cfg.cache_dir)
    model = build_classifier(spec.encoder_handle, len(corpus.class_names), seq_length=cfg.seq_length,
                             pooling=cfg.pooling, dropout=cfg.dropout)
    make_state(model).best_checkpoint.restore(
        best_checkpoint_path(Path(args.checkpoint_dir) / name)).assert_existing_objects_matched()
    labels = np.asarray(corpus.val_labels)
    lengths = np.concatenate([
        Preprocessor(spec.preprocess_handle, seq_length=cfg.seq_length).wordpieces(
            tf.constant(list(corpus.val_texts[i:i + 64]))).row_lengths().numpy()
        for i in range(0, len(labels), 64)])
    long = lengths > LONG
    clean = ~np.asarray(corpus.val_in_train(), bool)
    rows = []
    for variant in args.variants:
        truncation = "head_tail" if variant == "head_tail" else "head"
        windows = int(variant.split("-")[1]) if variant.startswith("windows-") else 1
        pre = Preprocessor(spec.preprocess_handle, seq_length=cfg.seq_length, truncation=truncation)
        module = ServingModule(pre, model, list(corpus.class_names), max_windows=windows,
                               window_overlap=args.overlap)
        module.serve(tf.constant(list(corpus.val_texts[:args.batch_size])))  # trace + warm up
        predicted, seconds = [], []
        for i in range(0, len(labels), args.batch_size):
            batch = tf.constant(list(corpus.val_texts[i:i + args.batch_size]))
            started = time.perf_counter()
            predicted.append(module.serve(batch)["class_id"].numpy())
            seconds.append((time.perf_counter() - started) / int(batch.shape[0]))
        right = np.concatenate(predicted) == labels
        rows.append({"variant": variant, "accuracy": float(right.mean()), "long_accuracy": float(right[long].mean()),
                     "clean_accuracy": float(right[clean].mean()), "wrong": int((~right).sum()),
                     "ms_per_doc": 1000 * statistics.median(seconds)})
        print(f"== {variant}: {rows[-1]}", flush=True)
    print(f"\n{machine_line()}\nrun {name} ({cfg.encoder}, {cfg.seq_length} tokens, trained with --truncation "
          f"{cfg.truncation}, {cfg.epochs} epochs); "
          f"{len(labels)} validation docs, {int(long.sum())} longer than {LONG} word pieces, {int(clean.sum())} "
          f"without a copy in train; window overlap {args.overlap}")
    print("| variant | val accuracy | wrong | > 512 word pieces | without train duplicates | ms per doc |\n"
          "|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['accuracy']:.4f} | {r['wrong']} | {r['long_accuracy']:.4f} | "
              f"{r['clean_accuracy']:.4f} | {r['ms_per_doc']:.1f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"run": name, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
