"""Where a serving request spends its time: per-op-type totals of one export, short text vs one full window.

Loads the newest version under a model base path the way TF Serving does (a TF1 session over the SavedModel's
``serve`` graph, ``tf.compat.v1.saved_model.loader``), runs ``serving_default`` on a headline and on a text
that fills one window, each with ``RunOptions.FULL_TRACE``, and prints for both the median wall time of the
traced calls and the op types that took longest (summed over the graph's nodes, median call). Tracing adds
overhead of its own, so read the shares, not the absolute times; ``make bench-serving`` gives the untraced ones.

Usage::

    .venv/bin/python benchmarks/profile_serving.py [models/bertbc] [--runs 20] [--top 12]
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_serving import latest_version, length_texts  # noqa: E402
from machine import cpu_description  # noqa: E402


def profile(session, signature, text: str, runs: int) -> tuple[float, dict[str, list[float]]]:
    """Median traced wall ms and, per op type, the per-call total ms of every run."""
    import tensorflow as tf

    feed = {signature.inputs["text"].name: [text]}
    fetches = [v.name for v in signature.outputs.values()]
    for _ in range(5):
        session.run(fetches, feed)
    walls, per_op = [], collections.defaultdict(list)
    for _ in range(runs):
        options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
        metadata = tf.compat.v1.RunMetadata()
        started = time.perf_counter()
        session.run(fetches, feed, options=options, run_metadata=metadata)
        walls.append((time.perf_counter() - started) * 1000)
        totals = collections.Counter()
        for device in metadata.step_stats.dev_stats:
            for node in device.node_stats:
                label = node.timeline_label
                op = label.split(" = ", 1)[1].split("(", 1)[0] if " = " in label else node.node_name
                totals[op] += node.all_end_rel_micros / 1000
        for op, ms in totals.items():
            per_op[op].append(ms)
    return statistics.median(walls), per_op


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_base_path", type=pathlib.Path, nargs="?", default=pathlib.Path("models/bertbc"),
                   help="folder of numbered SavedModel versions (default models/bertbc)")
    p.add_argument("--runs", type=int, default=20, help="traced calls per text (default %(default)s)")
    p.add_argument("--top", type=int, default=12, help="op types to list (default %(default)s)")
    args = p.parse_args(argv)

    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the TF-Text ops the graph uses)

    version = latest_version(args.model_base_path)
    texts = length_texts("", tf.saved_model.load(str(version)).preprocessor)  # bench-serving's texts, packed
    print(f"model: {version}\nCPU: {cpu_description()}")
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(version))
        signature = meta.signature_def["serving_default"]
        results = {name: profile(session, signature, text, args.runs)
                   for name, (text,) in ((k, texts[k]) for k in ("short", "one window"))}
    for name, (wall, per_op) in results.items():
        medians = {op: statistics.median(v) for op, v in per_op.items()}
        total = sum(medians.values())
        print(f"\n{name}: traced wall {wall:.2f} ms (median of {args.runs}); op time {total:.2f} ms over "
              f"{len(medians)} op types")
        for op, ms in sorted(medians.items(), key=lambda kv: -kv[1])[:args.top]:
            print(f"  {op:<28} {ms:7.3f} ms  {ms / total:6.1%}")
    short, window_ops = ({op: statistics.median(v) for op, v in r[1].items()} for r in results.values())
    print("\nop time, one window / short: " + ", ".join(
        f"{op} {window_ops.get(op, 0) / short[op]:.1f}x" for op in sorted(short, key=lambda o: -short[o])[:5]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
