"""`make bench-accuracy`: fine-tune on BBC with the default settings and with the seed notebook's, side by side.

Each configuration runs as its own `python -m trainer` process (fresh graph, fresh seeds) into
reports/bench-accuracy/<name>/; the table comes from the model cards the exports write.
Reference points on the same split: seed notebook 0.982 after 3 epochs; TF-IDF + linear SVM 0.984.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "default": [],
    "seed-notebook": ["--seed-notebook"],
}


def run_config(name: str, flags: list[str], args) -> dict:
    out = Path(args.out_dir) / name
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "trainer", *flags, "--logdir", str(out / "logs"), "--checkpoint-dir",
           str(out / "checkpoints"), "--model-base-path", str(out / "models" / "bertbc"), *args.extra]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    wall = time.perf_counter() - started
    card = json.loads(next((out / "models" / "bertbc").glob("*/model_card.json")).read_text())
    return {"name": name, "wall_s": wall, "card": card}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help="BBC folder (default: the trainer's default)")
    p.add_argument("--out-dir", default="reports/bench-accuracy", help="where runs go (default %(default)s)")
    p.add_argument("--only", nargs="*", choices=sorted(CONFIGS), help="run only these configurations")
    p.add_argument("extra", nargs="*", help="extra trainer flags for every configuration (after --)")
    args = p.parse_args()
    results = [run_config(n, f, args) for n, f in CONFIGS.items() if not args.only or n in args.only]
    print(f"\nmachine: {platform.machine()} {os.cpu_count()} cores, {platform.platform()}")
    print(f"{'config':<15} {'val acc per epoch':<44} {'best':>6} {'macroF1':>8} {'wall':>8}")
    for r in results:
        card = r["card"]
        per_epoch = " ".join(f"{e['val_accuracy']:.4f}" for e in card["epochs"])
        print(f"{r['name']:<15} {per_epoch:<44} {card['best_val_accuracy']:>6.4f} "
              f"{card['export_val_macro_f1']:>8.4f} {r['wall_s'] / 60:>6.1f}min")
        print(f"{'':<15} settings: {json.dumps(card['hyperparameters'], sort_keys=True)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
