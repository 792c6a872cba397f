"""`python -m trainer`: fine-tune and export (default), `analyze` the corpus, or list the `encoders`."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import logging
import sys

from trainer.config import SEED_NOTEBOOK, ConfigError, TrainConfig, default_cache_dir
from trainer.preflight import PreflightError, check_writable

D = TrainConfig()

EPILOG = f"""\
subcommands:
  python -m trainer analyze --data-dir DIR [--out-dir DIR]   corpus statistics that drive --seq-length
  python -m trainer encoders                                 list the encoder registry
  python -m trainer evaluate --model models/bertbc[/N] --data FILE [--text-column ...] [--label-column ...]
                                                             score any version on any labelled file
  python -m trainer publish [--canary] [--version N]         label a blessed version stable (or canary)
  python -m trainer promote | rollback                       stable := canary | stable := the previous stable

The seed notebook's settings are: --seed-notebook  (= {' '.join(f'--{k.replace("_", "-")} {v}'
                                                               for k, v in SEED_NOTEBOOK.items())})
Runs and resume: rerunning the same command after a crash (even kill -9) resumes the newest run if it is
unfinished, at the epoch after its last committed one. If that run was started with other settings the trainer
refuses and names them: pass the run's flags, or --new-run. A finished run is never overwritten.
--export-only re-exports the newest finished run (or --run NAME) with the settings it was trained with.

Multi-worker: when TF_CONFIG names several tasks, every worker runs this same command; worker 0 (or the chief
task) writes logs, checkpoints and the version, the others only train. --checkpoint-dir must be shared storage.
Set TF_CPP_MIN_LOG_LEVEL yourself or pass -v to see TensorFlow's C++ start-up messages (hidden by default).

Publishing: before a version is renamed into place it is loaded in a fresh process and replays its warm-up
requests (--load-check), then scored against the served version (--gate). A refused export goes to
<model-base-path>/../rejected/<model-name>/<run>. Exit codes: 0 published, 2 bad flags/data/run,
3 the gate refused the candidate, 4 the load check failed (docs/retrain.md).
"""


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: the line that matters, not 24 lines of usage above it."""

    def error(self, message: str):  # noqa: D401 (argparse's name)
        self.exit(2, f"{self.prog}: error: {message}\n  (`{self.prog} --help` explains every flag)\n")


def check_encoder_name(name: str, encoder_handle: str | None) -> None:
    """An unknown --encoder fails before any data is read, naming the closest registered names."""
    if encoder_handle is not None:
        return
    from trainer.encoders import ENCODERS  # noqa: PLC0415 (no TensorFlow import)

    if name not in ENCODERS:
        close = difflib.get_close_matches(name, ENCODERS, n=3, cutoff=0.0)
        raise ConfigError(f"unknown --encoder {name!r}; closest: {', '.join(close)} "
                          "(`python -m trainer encoders` lists them all; or pass --encoder-handle and "
                          "--preprocess-handle for any TF Hub-style model)")


def _int_or_auto(value: str) -> int | None:
    return None if value.lower() in ("", "auto", "none") else int(value)


def _optional_int(value: str) -> int | None:
    return None if value.lower() in ("", "none", "0", "all") else int(value)


def train_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m trainer", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Fine-tune a pretrained BERT encoder on news articles with a custom GradientTape loop, keep "
                    "the best-validation checkpoint and export it as a versioned raw-text SavedModel.")
    g = p.add_argument_group("data")
    g.add_argument("--data", "--data-dir", dest="data_dir", default=D.data_dir, metavar="PATH",
                   help="the labelled corpus: a folder of class folders of .txt files (the layout of "
                        "bbc-fulltext.zip), or a .csv/.tsv, .jsonl/.json, .parquet file, a glob, or several "
                        "comma-separated paths (docs/own-data.md). Default: the BBC corpus in --cache-dir, "
                        "downloaded from the official URL if online")
    g.add_argument("--text-column", dest="text_columns", action="append", default=None, metavar="NAME",
                   help="column holding the text (files only); repeat it to join several columns in that "
                        "order, separated by a blank line, e.g. --text-column title --text-column body "
                        "(default: text)")
    g.add_argument("--label-column", default=D.label_column, metavar="NAME",
                   help="column holding the label, a string or an integer (files only; default %(default)s)")
    g.add_argument("--label-names", default=None, metavar="MAP",
                   help="value=name pairs, e.g. 1=World,2=Sports (or a file with one value=name per line): the "
                        "names the model serves, in this order; every label value in the data must be mapped")
    g.add_argument("--multi-label", action="store_true",
                   help="train a multi-label model: a row may carry several labels (a JSON/Parquet list, or a CSV "
                        "cell split with --label-separator) or none; sigmoid head, binary cross-entropy, the best "
                        "checkpoint chosen on validation micro-F1, per-label thresholds tuned on validation and "
                        "served as the `labels` output (docs/own-data.md)")
    g.add_argument("--label-separator", default=None, metavar="SEP",
                   help="with --multi-label: split a text label cell on SEP, e.g. '|' for 'World|Sports'")
    g.add_argument("--encoding", default=D.encoding,
                   help="text encoding of CSV/TSV/JSONL files and class-folder documents (default %(default)s; "
                        "e.g. latin-1)")
    g.add_argument("--validation-data", default=None, metavar="PATH",
                   help="separate validation file(s), read with the same columns (replaces --validation-split)")
    g.add_argument("--test-data", default=None, metavar="PATH",
                   help="separate held-out test file(s), read with the same columns; scored once at the end "
                        "through the exported model, never used to choose a checkpoint")
    g.add_argument("--test-split", type=float, default=D.test_split, metavar="FRACTION",
                   help="hold out this stratified share as a test set (default %(default)s: none, which keeps the "
                        "seed notebook's BBC split exactly); scored once at the end through the exported model")
    g.add_argument("--min-examples", type=int, default=D.min_examples, metavar="N",
                   help="refuse a label with fewer training rows than N (default %(default)s)")
    g.add_argument("--dedup", action="store_true",
                   help="drop validation and test rows that duplicate a training (or, for test, validation) row: "
                        "exact, whitespace/case-normalized or near copies (MinHash, up to 50,000 rows), so the "
                        "scores are not inflated by leakage (BBC has 28 such validation documents)")
    g.add_argument("--shuffle-buffer", type=int, default=D.shuffle_buffer, metavar="ROWS",
                   help="own corpora stream their training rows from the files every epoch (nothing is held in "
                        "memory); this many rows are held to shuffle them (default %(default)s, ~1 KB each). A "
                        "training split that fits is shuffled exactly as in memory (same model); a larger one "
                        "is mixed within this window")
    g.add_argument("--input-sharding", default=D.input_sharding, choices=("auto", "file", "data"),
                   help="with several workers (MultiWorkerMirroredStrategy): 'file' gives each worker whole training "
                        "files, so each reads only its share of the corpus (files go to workers by row count; the "
                        "epoch lasts as long as the busiest worker needs); 'data' has every worker read every row "
                        "and train its slice of each batch (the same model as one process); 'auto' (default) takes "
                        "'file' when the training rows come from at least as many data files as workers, else 'data'")
    g.add_argument("--class-weights", default=D.class_weights, choices=("none", "balanced"),
                   help="'balanced' weights each training row's loss by n_rows / (n_classes x rows of its class), "
                        "so rare classes count as much as frequent ones (sklearn's 'balanced'); with --multi-label "
                        "each label's positive term is weighted so, by the rows carrying it; the weights are "
                        "logged and recorded in run.json and the model card (default %(default)s)")
    g.add_argument("--cache-dir", default=None,
                   help=f"where built encoders and the downloaded corpus are kept (default $BERTBC_CACHE_DIR or "
                        f"~/.cache/bertbc; now {default_cache_dir()})")
    g.add_argument("--validation-split", type=float, default=D.validation_split,
                   help="share of documents held out for validation (default %(default)s, as the seed)")
    g.add_argument("--split-seed", type=int, default=D.split_seed,
                   help="seed of the train/validation split (default %(default)s = the seed notebook's split)")
    g.add_argument("--max-train-docs", type=_optional_int, default=None,
                   help="use only the first N training documents (smoke runs; default all)")
    g.add_argument("--max-val-docs", type=_optional_int, default=None,
                   help="use only the first N validation documents (smoke runs; default all)")
    g = p.add_argument_group("model")
    g.add_argument("--encoder", default=D.encoder,
                   help="encoder name from `python -m trainer encoders` (default %(default)s: pretrained "
                        "all-MiniLM-L6-v2, works offline)")
    g.add_argument("--encoder-handle", default=None,
                   help="any TF Hub-style encoder (URL or local SavedModel path); needs --preprocess-handle")
    g.add_argument("--preprocess-handle", default=None,
                   help="the matching TF Hub-style preprocessing model (URL or path); needs --encoder-handle")
    g.add_argument("--pooling", choices=("cls", "mean"), default=D.pooling,
                   help="sentence vector: 'cls' = encoder pooled_output (seed), 'mean' = masked mean of token "
                        "vectors (what MiniLM was pretrained for; default %(default)s)")
    g.add_argument("--seq-length", type=int, default=D.seq_length,
                   help="word pieces per document incl. [CLS]/[SEP] (default %(default)s; seed 128)")
    g.add_argument("--truncation", choices=("head", "head_tail"), default=D.truncation,
                   help="how a longer article is cut to --seq-length: 'head' keeps the start (seed), 'head_tail' "
                        "keeps the first quarter and the last three quarters of the budget (default %(default)s)")
    g.add_argument("--serve-windows", type=int, default=D.serve_windows,
                   help="the exported model reads each text in up to N windows of --seq-length (evenly spread "
                        "from the start to the end, logits averaged); 1 = its head only, as trained. A text that "
                        "fits one window costs the same either way (default %(default)s, measured best on BBC). "
                        "With --export-only it may differ from the run's")
    g.add_argument("--window-overlap", type=_int_or_auto, default=D.window_overlap,
                   help="word pieces shared by consecutive windows when --serve-windows or --val-windows > 1 "
                        "(default a quarter of --seq-length: 64 at 256)")
    g.add_argument("--val-windows", type=int, default=D.val_windows,
                   help="validation reads each document in up to N windows, logits averaged, like the exported "
                        "model; the best checkpoint is chosen by that accuracy. 1 = the head only (default "
                        "%(default)s; --seed-notebook: 1)")
    g.add_argument("--dropout", type=float, default=D.dropout, help="dropout before the dense head (default %(default)s)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=D.epochs, help="epochs (default %(default)s; seed 3)")
    g.add_argument("--batch-size", type=int, default=D.batch_size, help="global batch size (default %(default)s)")
    g.add_argument("--learning-rate", type=float, default=D.learning_rate,
                   help="Adam peak learning rate (default %(default)s; seed 2e-5)")
    g.add_argument("--warmup-fraction", type=float, default=D.warmup_fraction,
                   help="share of steps with linear warm-up, then linear decay to 0; 0 = constant learning rate "
                        "(seed) (default %(default)s)")
    g.add_argument("--seed", type=int, default=D.seed,
                   help="seed of weights init, dropout and shuffling (default %(default)s)")
    g.add_argument("--seed-notebook", action="store_true",
                   help="use the seed notebook's settings for every flag it set (overrides the flags above)")
    g = p.add_argument_group("hardware")
    g.add_argument("--strategy", choices=("auto", "default", "mirrored"), default=D.strategy,
                   help="tf.distribute strategy: auto = MultiWorkerMirroredStrategy if TF_CONFIG names several "
                        "tasks, else MirroredStrategy if several GPUs are visible, else one device (default "
                        "%(default)s)")
    g.add_argument("--logical-cpus", type=int, default=D.logical_cpus,
                   help="split the CPU into N logical devices (tests MirroredStrategy without GPUs; default off)")
    g.add_argument("--deterministic", action="store_true",
                   help="enable TensorFlow's op determinism: reruns with the same --seed give bit-identical "
                        "models even where kernels are nondeterministic (GPU reductions, cuDNN); on a CPU the "
                        "default is already reproducible with the offline encoders (cost: see README)")
    g.add_argument("--mixed-precision", choices=("off", "bf16", "fp16"), default=D.mixed_precision,
                   help="training numerics; head and loss stay float32. bf16 on CPU: Keras mixed_bfloat16 policy "
                        "+ oneDNN bf16 rewrite of the encoder (AVX512-BF16/AMX CPUs); bf16 on GPU: the policy "
                        "only; fp16: mixed_float16 policy + loss scaling, plus the float16 rewrite of the encoder "
                        "on GPUs (default %(default)s)")
    g = p.add_argument_group("outputs")
    g.add_argument("--logdir", default=D.logdir, help="TensorBoard root; one folder per run (default %(default)s)")
    g.add_argument("--checkpoint-dir", default=D.checkpoint_dir,
                   help="checkpoint root; one folder per run with best/ and latest/ (default %(default)s)")
    g.add_argument("--model-base-path", default=D.model_base_path,
                   help="versions are exported to <this>/<N> (default %(default)s)")
    g.add_argument("--model-name", default=D.model_name,
                   help="model name used in warm-up requests (default %(default)s)")
    g.add_argument("--run-name", "--run", dest="run_name", default=None,
                   help="the run folder: training starts or resumes this run; with --export-only, the run to "
                        "export (default: resume the newest run if unfinished, else a new <timestamp>-<encoder>; "
                        "--export-only: the newest finished run)")
    g.add_argument("--new-run", dest="resume", action="store_false",
                   help="start a new run even if the newest run is unfinished (it is left as it is)")
    g.add_argument("--steps-per-summary", type=int, default=D.steps_per_summary,
                   help="write step loss and learning rate every N steps (default %(default)s)")
    g.add_argument("--save-every-minutes", type=float, default=D.save_every_minutes,
                   help="save a step checkpoint (model, optimizer, position in the epoch) in latest/steps/ this "
                        "often, so kill -9 loses at most that much training; 0 = only at epoch ends. Ctrl-C or "
                        "SIGTERM saves at the next step and exits (default %(default)s)")
    g.add_argument("--export-only", action="store_true",
                   help="skip training: re-export the best checkpoint of --run (default the newest finished run) "
                        "as a new version, with the settings the run was trained with (flags that contradict "
                        "them are refused)")
    g.add_argument("--export-precision", choices=("fp32", "bf16"), default=D.export_precision,
                   help="numerics of the exported serving graph: fp32 = as trained; bf16 = the encoder's "
                        "matmuls in bfloat16, cast inside the SavedModel (so TF Serving runs it too), LayerNorm, "
                        "pooling and head in float32; only for encoders built here (minilm-l6, tiny-random). bf16 "
                        "pays off only where bf16 matmuls are native (CPUs with AVX512-BF16/AMX under oneDNN, "
                        "Ampere+ GPUs); elsewhere it is emulated and slower (default %(default)s)")
    g = p.add_argument_group("publishing (docs/retrain.md)")
    g.add_argument("--gate", choices=("on", "off"), default=D.gate,
                   help="publish only if the candidate's accuracy (micro-F1 for multi-label data) on the evaluation "
                        "set is >= --gate-min and >= the served version's minus --gate-tolerance; else exit 3 "
                        "(default %(default)s; off = publish as before)")
    g.add_argument("--gate-min", type=float, default=None,
                   help="absolute floor of the gate's metric, e.g. 0.9 (default none); the first version only has "
                        "to meet this")
    g.add_argument("--gate-tolerance", type=float, default=None,
                   help="how far below the served version's score the candidate may be (default one document "
                        "of the evaluation set: 1/N)")
    g.add_argument("--gate-data", default=None,
                   help="evaluate on this gold set (class folders, or CSV/TSV/JSON lines/Parquet with columns "
                        "'text' and 'label') instead of the test/validation split")
    g.add_argument("--load-check", choices=("on", "off"), default=D.load_check,
                   help="load the candidate in a fresh process (tensorflow_model_server if on PATH) and replay its "
                        "warm-up requests before publishing; a failure exits 4 (default %(default)s)")
    g.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging, and TensorFlow's own C++/Python start-up messages")
    return p


def explicit_keys(parser: argparse.ArgumentParser, argv: list[str]) -> frozenset[str]:
    """The config fields the command line set explicitly (parsed again with every default suppressed)."""
    quiet = copy.deepcopy(parser)
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    given = set(vars(quiet.parse_args(argv)))
    if "seed_notebook" in given:
        given |= set(SEED_NOTEBOOK)
    return frozenset(given)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    if values.get("cache_dir") is None:
        values.pop("cache_dir", None)
    values["text_columns"] = tuple(values.get("text_columns") or TrainConfig.text_columns)
    if args.seed_notebook:
        values.update(SEED_NOTEBOOK)
    cfg = TrainConfig(**values).validate()
    check_encoder_name(cfg.encoder, cfg.encoder_handle)
    return cfg


def analyze_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m trainer analyze",
                                description="Corpus statistics that drive the choice of --seq-length: per-class "
                                            "counts per split, words per class, word-piece lengths vs 128/256/512.")
    p.add_argument("--data-dir", default=None, help="folder of class folders (default: BBC in --cache-dir)")
    p.add_argument("--cache-dir", default=None, help="built encoders / downloaded corpus (default as training)")
    p.add_argument("--out-dir", default="reports/analysis",
                   help="where analysis.json, word_piece_lengths.png and TensorBoard histograms go "
                        "(default %(default)s)")
    p.add_argument("--encoder", default=D.encoder,
                   help="whose tokenizer counts word pieces (default %(default)s); 'none' counts words only")
    p.add_argument("-v", "--verbose", action="store_true", help="TensorFlow's own C++ start-up messages too")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if "-v" in argv or "--verbose" in argv else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv[:1] == ["encoders"]:
        from trainer.encoders import DEFAULT_ENCODER, ENCODERS  # noqa: PLC0415

        for name, spec in ENCODERS.items():
            mark = " (default)" if name == DEFAULT_ENCODER else ""
            print(f"{name}{mark}\n    encoder:    {spec.encoder_handle}\n    preprocess: {spec.preprocess_handle}")
        return 0
    if argv[:1] == ["analyze"]:
        return _analyze(analyze_parser().parse_args(argv[1:]))
    if argv[:1] == ["evaluate"]:
        return _evaluate(evaluate_parser().parse_args(argv[1:]))
    if argv[:1] in (["publish"], ["promote"], ["rollback"]):
        from trainer import release  # noqa: PLC0415 (no TensorFlow import)

        return release.main(argv)
    parser = train_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        check_writable({"--checkpoint-dir": cfg.checkpoint_dir, "--logdir": cfg.logdir,
                        "--model-base-path": cfg.model_base_path, "--cache-dir": cfg.cache_dir})
    except (ConfigError, PreflightError) as e:
        parser.error(str(e))  # exit 2: a Job's podFailurePolicy fails at once instead of retrying
    from trainer import quiet  # noqa: PLC0415

    quiet.import_tensorflow(verbose=args.verbose)
    from trainer import run  # noqa: PLC0415 (imports TensorFlow)
    from trainer.data import DataError  # noqa: PLC0415
    from trainer.distributed import ClusterError  # noqa: PLC0415
    from trainer.encoders import EncoderError  # noqa: PLC0415
    from trainer.gate import GateDataError, PublishRefused  # noqa: PLC0415
    from trainer.interrupts import Interrupted  # noqa: PLC0415

    try:
        if cfg.export_only:
            result = run.export_only(cfg, explicit_keys(parser, argv))
        else:
            result = run.train_and_export(cfg)
    except Interrupted as e:  # SIGINT/SIGTERM while training: saved at a step boundary (trainer/interrupts.py)
        print(e, file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (start-up, export): nothing trained is lost
        print("interrupted outside training (nothing trained is lost); rerun the same command to resume",
              file=sys.stderr)
        return 130
    except PublishRefused as e:  # the gate (3) or the load check (4): one line naming both figures / the cause
        logging.getLogger("bertbc.trainer").error("%s", e)
        return e.exit_code
    except (DataError, EncoderError, run.RunError, ClusterError, FileNotFoundError, GateDataError) as e:
        logging.getLogger("bertbc.trainer").error("%s", e)
        return 2
    if result.version is None:
        print(f"run {result.run_name}: this worker finished training; the chief exports the version")
        return 0
    metric = "micro-F1" if cfg.multi_label else "accuracy"
    print(f"run {result.run_name}: best val {metric} {result.best_val_accuracy:.4f}; exported version "
          f"{result.version} to {result.export_path}\n  checkpoints: {result.run_checkpoint_dir}\n"
          f"  TensorBoard: tensorboard --logdir {cfg.logdir}")
    if result.test_report:
        test = result.test_report
        headline = (f"micro-F1 {test['micro_f1']:.4f}, subset accuracy {test['subset_accuracy']:.4f}"
                    if test.get("multi_label") else f"accuracy {test['accuracy']:.4f}")
        print(f"run {result.run_name}: held-out test {headline}, macro-F1 {test['macro_f1']:.4f} on "
              f"{test['documents']} documents (through the exported model; details in its model_card.json)")
    return 0


def evaluate_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m trainer evaluate",
               description="Score an exported version on any labelled file through its own serving graph: "
                           "accuracy, macro-F1, per-class figures, confusion matrix, misclassified rows (a "
                           "multi-label model: micro-/macro-F1, subset accuracy, per-label figures).")
    p.add_argument("--model", required=True,
                   help="a version folder (models/bertbc/3) or a base path (models/bertbc: its newest version)")
    p.add_argument("--data", required=True, metavar="PATH",
                   help="labelled rows: class folders, .csv/.tsv, .jsonl/.json, .parquet, a glob (every row is "
                        "scored; no split)")
    p.add_argument("--text-column", dest="text_columns", action="append", default=None, metavar="NAME",
                   help="text column(s), repeatable, joined in order (default: text)")
    p.add_argument("--label-column", default=D.label_column, help="label column (default %(default)s)")
    p.add_argument("--label-names", default=None, metavar="MAP",
                   help="value=name pairs (or a file) mapping the file's label values to the model's class names")
    p.add_argument("--label-separator", default=None, metavar="SEP",
                   help="split a text label cell on SEP (several labels per row; for a multi-label model), "
                        "e.g. '|'; JSON/Parquet lists need nothing")
    p.add_argument("--encoding", default=D.encoding, help="text encoding of the file (default %(default)s)")
    p.add_argument("--out", default=None,
                   help="where the JSON report goes (default reports/evaluate-<model>-<version>.json)")
    p.add_argument("-v", "--verbose", action="store_true", help="TensorFlow's own C++ start-up messages too")
    return p


def _evaluate(args: argparse.Namespace) -> int:
    from corpus import BadRow, CorpusError, iter_rows  # noqa: PLC0415
    from corpus.labels import parse_label_names  # noqa: PLC0415

    log = logging.getLogger("bertbc.trainer")
    texts, labels, ids, bad = [], [], [], []
    try:
        mapping = parse_label_names(args.label_names) or {}
        for row in iter_rows(args.data, text_columns=tuple(args.text_columns or ("text",)),
                             label_column=args.label_column, encoding=args.encoding,
                             label_separator=args.label_separator):
            if isinstance(row, BadRow):
                bad.append(row)
            else:  # a label set per row: a single-label model refuses rows with several (evaluate_saved_model)
                texts.append(row.text.encode("utf-8"))
                labels.append(tuple(mapping.get(v, v) for v in row.labels))
                ids.append(row.id)
    except CorpusError as e:
        log.error("%s", e)
        return 2
    for row in bad[:5]:
        log.warning("skipped %s: %s", row.id, row.reason)
    if bad:
        log.warning("%d row(s) skipped (not scored)", len(bad))
    if not texts:
        log.error("%s: no scorable rows", args.data)
        return 2
    from trainer import quiet  # noqa: PLC0415

    quiet.import_tensorflow(verbose=args.verbose)
    from trainer.evaluate import evaluate_saved_model, format_report, resolve_version, write_report  # noqa: PLC0415

    try:
        version_dir = resolve_version(args.model)
        report = evaluate_saved_model(version_dir, texts, labels, ids)
    except (FileNotFoundError, ValueError) as e:
        log.error("%s", e)
        return 2
    report["data"], report["skipped_rows"] = str(args.data), len(bad)
    out = args.out or f"reports/evaluate-{version_dir.parent.name}-{version_dir.name}.json"
    print(format_report(report, what=f"{version_dir} on {args.data}"))
    print(f"report: {write_report(report, out)}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    if args.encoder != "none":
        try:
            check_encoder_name(args.encoder, None)
        except ConfigError as e:
            analyze_parser().error(str(e))
    from trainer import quiet  # noqa: PLC0415

    quiet.import_tensorflow(verbose=args.verbose)
    from trainer import analyze, data  # noqa: PLC0415

    cache_dir = args.cache_dir or default_cache_dir()
    try:
        data_dir = data.resolve_data_dir(args.data_dir, cache_dir)
    except data.DataError as e:
        logging.getLogger("bertbc.trainer").error("%s", e)
        return 2
    lengths_fn = None
    if args.encoder != "none":
        from trainer import encoders, preprocessing  # noqa: PLC0415

        spec = encoders.resolve_encoder(args.encoder, cache_dir=cache_dir)
        lengths_fn = lambda texts: preprocessing.token_lengths(spec.preprocess_handle, texts)  # noqa: E731
    analyze.run_analysis(data_dir, args.out_dir, token_lengths_fn=lengths_fn)
    print(f"wrote {args.out_dir}/analysis.json, {args.out_dir}/word_piece_lengths.png and TensorBoard "
          f"histograms in {args.out_dir}/tensorboard")
    return 0
