"""`make bench-pipeline`: where a training step's time goes on this machine, variants side by side in one run.

Variants (each in its own process, because precision rewrites and tf.function state are process-wide):
  graph       tf.function train_step, parallel map + prefetch, fp32   (the trainer's default path)
  eager       the same step run eagerly
  serial      tf.function, but the input pipeline without parallel map and prefetch
  bf16        tf.function + --mixed-precision bf16 (Keras policy + oneDNN bf16 Grappler rewrite)
  determ      tf.function + --deterministic (tf.config.experimental.enable_op_determinism): its cost
For each: median step time, steps/s, the share of step time spent waiting for input, achieved FLOP/s as
a share of this machine's dense matmul FLOP/s (fp32 or bf16, measured in the same process), and how many
batches/s the input pipeline produces on its own (what it could feed a much faster accelerator).
FLOPs per step are counted analytically for a BERT encoder (6·params·tokens-style, attention included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from machine import machine_line  # noqa: E402

VARIANTS = ("graph", "eager", "serial", "bf16", "determ")


def matmul_flops(dtype: str, n: int = 2048, repeats: int = 10) -> float:
    import tensorflow as tf

    a = tf.random.normal([n, n], dtype=tf.float32)
    a = tf.cast(a, dtype)
    f = tf.function(lambda x: tf.matmul(x, x))
    f(a).numpy()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).numpy()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def bert_train_flops(config: dict, batch: int, seq: int, num_classes: int) -> float:
    """Forward FLOPs of a BERT encoder on [batch, seq] tokens (matmuls only) × 3 for forward + backward."""
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    per_token_layer = 2 * (4 * h * h + 2 * h * i) + 2 * 2 * seq * h
    forward = batch * seq * layers * per_token_layer + 2 * batch * h * num_classes
    return 3.0 * forward


def run_variant(variant: str, args) -> dict:
    import numpy as np
    import tensorflow as tf

    from trainer import data, encoders
    from trainer.loop import make_steps
    from trainer.model import build_classifier
    from trainer.pipeline import make_train_dataset
    from trainer.precision import configure_precision
    from trainer.preprocessing import Preprocessor

    configure_precision("bf16" if variant == "bf16" else "off")
    if variant == "determ":
        tf.config.experimental.enable_op_determinism()
    tf.random.set_seed(0)
    corpus = data.load_corpus(data.resolve_data_dir(args.data_dir, args.cache_dir),
                              max_train_docs=args.batch_size * (args.steps + args.warmup), max_val_docs=16)
    spec = encoders.resolve_encoder(args.encoder, cache_dir=args.cache_dir)
    pre = Preprocessor(spec.preprocess_handle, seq_length=args.seq_length, truncation="head")
    model = build_classifier(spec.encoder_handle, len(corpus.class_names), seq_length=args.seq_length)
    import tf_keras

    optimizer = tf_keras.optimizers.Adam(2e-5)
    strategy = tf.distribute.get_strategy()
    steps = make_steps(strategy, model, optimizer, compiled=variant != "eager")
    ds = make_train_dataset(corpus.train_texts, corpus.train_labels, pre, batch_size=args.batch_size, seed=0,
                            parallel=variant != "serial")
    # The input pipeline alone: how fast can it feed an accelerator that needed no time per step?
    n_input = 0
    t = time.perf_counter()
    for _ in ds.repeat().take(args.input_batches):
        n_input += 1
    input_batches_per_s = n_input / (time.perf_counter() - t)
    it = iter(ds)
    waits, totals = [], []
    for k in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        float(steps.train_step(batch))
        t2 = time.perf_counter()
        if k >= args.warmup:
            waits.append(t1 - t0)
            totals.append(t2 - t0)
    flops = bert_train_flops(args.encoder_config, args.batch_size, args.seq_length, len(corpus.class_names))
    step = statistics.median(totals)
    peak = matmul_flops("bfloat16" if variant == "bf16" else "float32")
    return {"variant": variant, "median_step_s": step, "steps_per_s": 1 / step,
            "input_wait_share": float(np.sum(waits) / np.sum(totals)), "achieved_flops": flops / step,
            "matmul_flops": peak, "flops_share": flops / step / peak, "input_batches_per_s": input_batches_per_s}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help="corpus folder (default: the trainer's default)")
    p.add_argument("--cache-dir", default=None, help="encoder cache (default: the trainer's default)")
    p.add_argument("--encoder", default="minilm-l6", help="encoder to time (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size (default %(default)s, the seed's)")
    p.add_argument("--seq-length", type=int, default=128, help="sequence length (default %(default)s)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant (default %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default %(default)s)")
    p.add_argument("--input-batches", type=int, default=40,
                   help="batches the input pipeline produces alone, to time it without training (default %(default)s)")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS, help="which variants")
    p.add_argument("--hidden-size", type=int, default=384, help="encoder width, for FLOPs (MiniLM-L6: 384)")
    p.add_argument("--intermediate-size", type=int, default=1536, help="FFN width, for FLOPs (MiniLM-L6: 1536)")
    p.add_argument("--layers", type=int, default=6, help="encoder layers, for FLOPs (MiniLM-L6: 6)")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args()
    from trainer.config import default_cache_dir

    args.cache_dir = args.cache_dir or default_cache_dir()
    args.encoder_config = {"hidden_size": args.hidden_size, "intermediate_size": args.intermediate_size,
                           "num_hidden_layers": args.layers}
    if args.variant:
        print("RESULT " + json.dumps(run_variant(args.variant, args)), flush=True)
        return 0
    rows = []
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--variant", variant, "--encoder", args.encoder, "--batch-size",
               str(args.batch_size), "--seq-length", str(args.seq_length), "--steps", str(args.steps), "--warmup",
               str(args.warmup), "--input-batches", str(args.input_batches), "--cache-dir", args.cache_dir, "--hidden-size", str(args.hidden_size),
               "--intermediate-size", str(args.intermediate_size), "--layers", str(args.layers)] + (["--data-dir", args.data_dir] if args.data_dir else [])
        print(f"== {variant}", flush=True)
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(out.stderr[-3000:])
            return 1
        rows.append(json.loads(line[7:]))
    base = rows[0]["median_step_s"]
    print(f"\n{machine_line()}\nencoder {args.encoder}, batch "
          f"{args.batch_size} x {args.seq_length} tokens, {args.steps} timed steps per variant")
    print(f"{'variant':<8} {'step s':>8} {'steps/s':>8} {'vs graph':>9} {'input wait':>11} {'GFLOP/s':>9} "
          f"{'matmul GFLOP/s':>15} {'of peak':>8} {'input alone b/s':>16}")
    for r in rows:
        print(f"{r['variant']:<8} {r['median_step_s']:>8.3f} {r['steps_per_s']:>8.2f} "
              f"{base / r['median_step_s']:>8.2f}x {100 * r['input_wait_share']:>10.1f}% "
              f"{r['achieved_flops'] / 1e9:>9.1f} {r['matmul_flops'] / 1e9:>15.1f} {100 * r['flops_share']:>7.1f}% {r['input_batches_per_s']:>16.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
