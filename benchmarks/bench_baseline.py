"""The bar a fine-tuned model must clear: TF-IDF + logistic regression on the SAME split as the trainer.

    python benchmarks/bench_baseline.py --data news.csv --text-column title --text-column body \
        --label-column topic --label-names MAP --test-split 0.2 [--model models/bertbc/N]

The corpus is read and split by `trainer.own_data.load_own_corpus` with the trainer's own data flags, so the
baseline trains on the trainer's training rows, is tuned on nothing, and is scored on the trainer's held-out
test rows (or, without a test set, its validation rows). scikit-learn: word 1-2-gram TF-IDF (sublinear tf,
min_df 2), LogisticRegression (C=10, lbfgs, balanced=False); multi-label: one-vs-rest logistic regression with
a 0.5 threshold. With `--model`, the model card's figures on the same rows are printed beside it, with the
verdict. Prints its figures and the CPU; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu_description  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the corpus, as the trainer's --data")
    p.add_argument("--text-column", dest="text_columns", action="append", default=None, metavar="NAME")
    p.add_argument("--label-column", default="label")
    p.add_argument("--label-names", default=None, metavar="MAP")
    p.add_argument("--encoding", default="utf-8")
    p.add_argument("--validation-split", type=float, default=0.2)
    p.add_argument("--test-split", type=float, default=0.0)
    p.add_argument("--validation-data", default=None)
    p.add_argument("--test-data", default=None)
    p.add_argument("--split-seed", type=int, default=42)
    p.add_argument("--multi-label", action="store_true")
    p.add_argument("--label-separator", default=None)
    p.add_argument("--model", default=None, help="a version folder whose model card to compare with")
    return p.parse_args(argv)


def baseline_scores(corpus) -> dict:
    """Fits on the training rows; scores the test rows (validation when there are none)."""
    from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: PLC0415
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from sklearn.metrics import accuracy_score, f1_score  # noqa: PLC0415
    from sklearn.multiclass import OneVsRestClassifier  # noqa: PLC0415

    from trainer.multilabel import multi_hot  # noqa: PLC0415

    on_test = bool(corpus.test_texts)
    texts, labels = (corpus.test_texts, corpus.test_labels) if on_test else (corpus.val_texts, corpus.val_labels)
    decode = lambda ts: [t.decode("utf-8", "replace") for t in ts]  # noqa: E731
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    started = time.perf_counter()
    x_train = vectorizer.fit_transform(decode(corpus.train_texts))
    x_eval = vectorizer.transform(decode(texts))
    classifier = LogisticRegression(C=10.0, max_iter=2000)
    scores = {"rows": "test" if on_test else "validation", "documents": len(texts)}
    if corpus.multi_label:
        width = len(corpus.class_names)
        y_train, y_eval = multi_hot(corpus.train_labels, width), multi_hot(labels, width)
        predicted = OneVsRestClassifier(classifier).fit(x_train, y_train).predict(x_eval)
        scores.update(micro_f1=float(f1_score(y_eval, predicted, average="micro", zero_division=0)),
                      macro_f1=float(f1_score(y_eval, predicted, average="macro", zero_division=0)),
                      subset_accuracy=float(accuracy_score(y_eval, predicted)))
    else:
        predicted = classifier.fit(x_train, np.asarray(corpus.train_labels)).predict(x_eval)
        scores.update(accuracy=float(accuracy_score(labels, predicted)),
                      macro_f1=float(f1_score(labels, predicted, average="macro")))
    scores["seconds"] = round(time.perf_counter() - started, 1)
    return scores


def model_scores(version_dir: str, rows: str) -> dict:
    card = json.loads((pathlib.Path(version_dir) / "model_card.json").read_text())
    if rows == "test":
        if "test" not in card:
            raise SystemExit(f"{version_dir}: its model card has no test figures; train it with the same test option")
        return card["test"]
    if card.get("multi_label"):
        return card["export_val_tuned"]
    return {"accuracy": card["export_val_accuracy"], "macro_f1": card["export_val_macro_f1"]}


def main(argv=None) -> int:
    args = parse_args(argv)
    from trainer.own_data import load_own_corpus  # noqa: PLC0415

    corpus = load_own_corpus(
        args.data, text_columns=tuple(args.text_columns or ("text",)), label_column=args.label_column,
        label_names=args.label_names, encoding=args.encoding, validation_split=args.validation_split,
        test_split=args.test_split, seed=args.split_seed, validation_data=args.validation_data,
        test_data=args.test_data, multi_label=args.multi_label, label_separator=args.label_separator)
    scores = baseline_scores(corpus)
    headline = "micro_f1" if corpus.multi_label else "accuracy"
    print(f"CPU: {cpu_description()}")
    print(f"TF-IDF + logistic regression, trained on {len(corpus.train_texts)} rows, scored on "
          f"{scores['documents']} {scores['rows']} rows in {scores['seconds']} s:")
    print("  " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float) and k != "seconds"))
    if args.model:
        model = model_scores(args.model, scores["rows"])
        print(f"model {args.model} on the same rows: {headline} {model[headline]:.4f}, macro_f1 "
              f"{model['macro_f1']:.4f} -> {'beats' if model[headline] > scores[headline] else 'does NOT beat'} "
              f"the baseline by {model[headline] - scores[headline]:+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
