"""The evaluation gate: a retrained model is published only if it is not worse than the one being served.

Like TFX's Evaluator, the candidate and the baseline are scored on the SAME evaluation set, each through its own
exported serving graph (raw strings in, ``label`` out, loaded with ``tf.saved_model.load``), so what is compared
is what clients would get. The candidate passes if

    candidate >= --gate-min (when given)   and   candidate >= served - --gate-tolerance

where the default tolerance is one document of the set (1/N): a retrain may lose one document to noise, not two.
The very first version (nothing served yet) only has to meet the floor. A refused candidate is moved OUTSIDE the
model's base path (``rejected_dir``), so TF Serving's version scan never sees it; the caller exits with
``EXIT_GATE_REFUSED``.

The metric is pluggable (``METRICS``): accuracy for single-label sets; micro-F1 over label sets for multi-label
ones (equal to accuracy when every document has exactly one true and one predicted label).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger("bertbc.trainer")

# Exit codes of `python -m trainer` (documented in --help and docs/retrain.md); 2 is a user error.
EXIT_GATE_REFUSED = 3
EXIT_LOAD_CHECK_FAILED = 4

REJECTED = "rejected"  # <model_base_path>/../rejected/<model_name>/<run>
CARD = "model_card.json"
_EPS = 1e-9  # scores are ratios of document counts: compare with a hair of slack for float rounding

LabelSets = Sequence[tuple[str, ...]]
Metric = Callable[[LabelSets, LabelSets], float]


class PublishRefused(RuntimeError):
    """The export was not published; the message is the one-line reason, `exit_code` the process's exit code."""

    exit_code = EXIT_GATE_REFUSED


class GateRefused(PublishRefused):
    """The candidate scored below the floor or below the served version (or cannot be compared with it)."""

    exit_code = EXIT_GATE_REFUSED


class GateDataError(ValueError):
    """The evaluation set cannot be used (unusable rows, labels the model does not know); a user error (exit 2)."""


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """Documents the candidate and the served version are both scored on.

    Attributes:
      texts: raw documents (bytes), what clients send.
      labels: per document, its true label names (one for single-label data).
      source: where the set came from, for the report ("validation split", "--gate-data FILE").
    """

    texts: tuple[bytes, ...]
    labels: tuple[tuple[str, ...], ...]
    source: str
    multi_label_data: bool = False  # a --multi-label corpus: micro-F1 even if every row has one label

    def __post_init__(self):
        if len(self.texts) != len(self.labels):
            raise GateDataError(f"{len(self.texts)} texts but {len(self.labels)} label entries")
        if not self.texts:
            raise GateDataError(f"the evaluation set ({self.source}) is empty; the gate needs documents to compare on")

    @property
    def multi_label(self) -> bool:
        return self.multi_label_data or any(len(labels) != 1 for labels in self.labels)

    @property
    def label_names(self) -> set[str]:
        return {name for labels in self.labels for name in labels}


def eval_set_from_corpus(corpus) -> EvalSet:
    """The test split of a `trainer.data.Corpus` when it has one (`test_texts`/`test_labels`), else its
    validation split, as texts + label names."""
    names = list(corpus.class_names)
    texts, labels, source = getattr(corpus, "test_texts", None), getattr(corpus, "test_labels", None), "test split"
    if not texts:
        texts, labels, source = corpus.val_texts, corpus.val_labels, "validation split"
    if getattr(corpus, "multi_label", False):
        return EvalSet(tuple(texts), tuple(tuple(names[i] for i in ids) for ids in labels), source, True)
    return EvalSet(tuple(texts), tuple((names[i],) for i in labels), source)


def load_gate_data(path: str, *, text_columns: Sequence[str] = ("text",), label_column: str = "label",
                   label_names: str | None = None, encoding: str = "utf-8") -> EvalSet:
    """A user's gold set read with the own-corpus readers (class folders, CSV/TSV, JSON lines, Parquet).

    Raises:
      GateDataError: a row is unusable (one line: how many, and the first reason), the file cannot be read,
        or the set is empty.
    """
    from corpus import BadRow, CorpusError, iter_rows  # noqa: PLC0415
    from corpus.labels import parse_label_names  # noqa: PLC0415

    texts, labels, bad = [], [], []
    try:
        names = parse_label_names(label_names) or {}
        rows = list(iter_rows(path, text_columns=list(text_columns), label_column=label_column, encoding=encoding))
    except CorpusError as e:
        raise GateDataError(f"--gate-data: {e}") from None
    for row in rows:
        if isinstance(row, BadRow):
            bad.append(row)
            continue
        texts.append(row.text.encode("utf-8"))
        labels.append(tuple(names.get(v, v) for v in row.labels))  # the served names, as the model answers
    if bad:
        raise GateDataError(f"--gate-data {path}: {len(bad)} unusable row(s), first {bad[0].id}: {bad[0].reason}; "
                            "a gold set must be clean")
    if not texts:
        raise GateDataError(f"--gate-data {path} holds no documents")
    return EvalSet(tuple(texts), tuple(labels), f"--gate-data {path}")


def micro_f1(true: LabelSets, predicted: LabelSets) -> float:
    """Micro-averaged F1 over label sets: 2·TP / (2·TP + FP + FN) summed over documents."""
    tp = fp = fn = 0
    for want, got in zip(true, predicted, strict=True):
        want, got = set(want), set(got)
        tp += len(want & got)
        fp += len(got - want)
        fn += len(want - got)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def accuracy(true: LabelSets, predicted: LabelSets) -> float:
    """Share of documents whose predicted label set equals the true one (single-label: plain accuracy)."""
    pairs = list(zip(true, predicted, strict=True))
    return sum(set(a) == set(b) for a, b in pairs) / len(pairs)


METRICS: dict[str, Metric] = {"accuracy": accuracy, "micro_f1": micro_f1}


def metric_for(eval_set: EvalSet) -> str:
    return "micro_f1" if eval_set.multi_label else "accuracy"


def load_serving_graph(model_dir: str | Path):
    """`tf.saved_model.load` with the TF-Text ops registered (as the model server links them)."""
    import tensorflow as tf  # noqa: PLC0415
    import tensorflow_text  # noqa: F401, PLC0415 (registers the tokenizer ops of the graph)

    return tf.saved_model.load(str(model_dir))


def predict_label_sets(loaded, texts: Sequence[bytes], batch_size: int = 32) -> list[tuple[str, ...]]:
    """Per text, the labels `serving_default` answers: a multi-label model's `labels` output ("" padding
    dropped), else its `label` output (one string per text)."""
    from trainer.evaluate import predict  # noqa: PLC0415

    predictions = predict(loaded, texts, batch_size=batch_size)
    if predictions.label_sets is not None:
        return predictions.label_sets
    return [(label,) for label in predictions.labels]


def class_names_of(model_dir: str | Path, loaded=None) -> tuple[str, ...] | None:
    """The label set of an exported version: its `class_names` variable, else its model card; None if unknown."""
    if loaded is not None and hasattr(loaded, "class_names"):
        return tuple(n.decode("utf-8") for n in loaded.class_names.numpy())
    card = Path(model_dir) / CARD
    if card.is_file():
        names = json.loads(card.read_text()).get("data", {}).get("class_names")
        if names:
            return tuple(names)
    return None


def newest_version(base_path: str | Path) -> int | None:
    """The newest published version (a numeric folder holding a SavedModel), as TF Serving's default policy."""
    base = Path(base_path)
    versions = [int(p.name) for p in base.iterdir()
                if p.name.isascii() and p.name.isdigit() and (p / "saved_model.pb").is_file()] \
        if base.is_dir() else []
    return max(versions, default=None)


def served_version(base_path: str | Path, model_config: str | Path | None = None,
                   model_name: str = "bertbc") -> int | None:
    """The version clients get: the `stable` label of a release config (trainer/release.py) when it names this
    model and that version still exists, else the newest published version."""
    if model_config is not None and Path(model_config).is_file():
        from trainer import release  # noqa: PLC0415

        try:
            stable = release.read_state(Path(model_config), model_name).stable
        except release.ReleaseError:
            stable = None
        if stable is not None and (Path(base_path) / str(stable) / "saved_model.pb").is_file():
            return stable
    return newest_version(base_path)


@dataclasses.dataclass
class GateReport:
    """What the gate measured and decided (goes into the model card, TensorBoard and the log)."""

    metric: str
    docs: int
    eval_source: str
    candidate: float | None
    served: float | None
    served_version: int | None
    min_score: float | None
    tolerance: float
    passed: bool
    reason: str
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "seconds": round(self.seconds, 2)}


def decide(candidate: float, served: float | None, *, metric: str, docs: int, served_version: int | None,
           min_score: float | None, tolerance: float) -> tuple[bool, str]:
    """(passed, one-line reason naming both figures)."""
    cand = f"candidate {metric} {candidate:.4f}"
    served_txt = "nothing served yet" if served is None else f"served version {served_version} {served:.4f}"
    where = f"on {docs} docs"
    if min_score is not None and candidate + _EPS < min_score:
        return False, f"{cand} < --gate-min {min_score:.4f} ({served_txt}, {where})"
    if served is not None and candidate + _EPS < served - tolerance:
        return False, (f"{cand} < {served_txt} - tolerance {tolerance:.4f} = {served - tolerance:.4f} ({where})")
    if served is None:
        floor = "" if min_score is None else f" >= --gate-min {min_score:.4f}"
        return True, f"{cand}{floor}; {served_txt}, so no baseline to beat ({where})"
    return True, f"{cand} >= {served_txt} - tolerance {tolerance:.4f} ({where})"


def evaluate(candidate_dir: str | Path, base_path: str | Path, eval_set: EvalSet, *, min_score: float | None = None,
             tolerance: float | None = None, batch_size: int = 32, model_config: str | Path | None = None,
             model_name: str = "bertbc") -> GateReport:
    """Scores the candidate (an export folder) and the served version under `base_path`; decides.

    Args:
      candidate_dir: the candidate's SavedModel folder (the temporary export folder, before the rename).
      base_path: the model's base path, whose newest version (or `stable` label) is the baseline.
      eval_set: the documents both are scored on.
      min_score: optional absolute floor of the metric.
      tolerance: how far below the served score the candidate may be; None = one document (1 / len(eval_set)).
      model_config: a release config (trainer/release.py); its `stable` label is the served version if set.

    Returns:
      the report; `passed` False with a one-line `reason` when the candidate must not be published.

    Raises:
      GateDataError: the evaluation set uses labels the candidate does not know.
    """
    started = time.perf_counter()
    docs = len(eval_set.texts)
    metric = metric_for(eval_set)
    tolerance = 1.0 / docs if tolerance is None else tolerance
    candidate = load_serving_graph(candidate_dir)
    candidate_names = class_names_of(candidate_dir, candidate)
    version = served_version(base_path, model_config, model_name)
    report = GateReport(metric, docs, eval_set.source, None, None, version, min_score, tolerance, False, "")
    served = None
    if version is not None:
        served_dir = Path(base_path) / str(version)
        served = load_serving_graph(served_dir)
        served_names = class_names_of(served_dir, served)
        if candidate_names and served_names and set(candidate_names) != set(served_names):
            report.reason = (f"the candidate's labels {sorted(candidate_names)} differ from served version "
                             f"{version}'s {sorted(served_names)}: they cannot be compared; pass --gate off to "
                             "publish anyway, or export under a new model (--model-name NAME --model-base-path "
                             "models/NAME)")
            report.seconds = time.perf_counter() - started
            return report
    unknown = eval_set.label_names - set(candidate_names or eval_set.label_names)
    if unknown:
        raise GateDataError(f"the evaluation set ({eval_set.source}) has label(s) {sorted(unknown)} that the "
                            f"candidate does not know (its classes: {list(candidate_names)})")
    if served is not None:
        report.served = METRICS[metric](eval_set.labels, predict_label_sets(served, eval_set.texts, batch_size))
    report.candidate = METRICS[metric](eval_set.labels, predict_label_sets(candidate, eval_set.texts, batch_size))
    report.passed, report.reason = decide(report.candidate, report.served, metric=metric, docs=docs,
                                          served_version=version, min_score=min_score, tolerance=tolerance)
    report.seconds = time.perf_counter() - started
    return report


def rejected_dir(base_path: str | Path, model_name: str, run_name: str) -> Path:
    """`<base_path>/../rejected/<model_name>/<run>` (`-2`, `-3`, … if taken): beside the served folder, never in
    it, so neither TF Serving's version scan nor `next_version` ever sees a refused candidate."""
    root = Path(base_path).resolve().parent / REJECTED / model_name
    target, n = root / run_name, 1
    while target.exists():
        n += 1
        target = root / f"{run_name}-{n}"
    return target


def move_to_rejected(tmp_dir: Path, target: Path) -> Path:
    """Moves the refused export out of the base path (a rename on one filesystem; a copy otherwise)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(tmp_dir), str(target))
    for leftover in target.glob(".export.lock"):
        leftover.unlink()
    return target


def update_card(version_dir: Path, **sections) -> None:
    """Adds sections (e.g. `gate=…`, `load_check=…`) to the export's model card, written whole again."""
    path = version_dir / CARD
    card = json.loads(path.read_text()) if path.is_file() else {}
    card.update(sections)
    tmp = path.with_name(CARD + ".tmp")
    tmp.write_text(json.dumps(card, indent=2, sort_keys=True))
    os.replace(tmp, path)


def write_summary(run_logdir: str | Path, report: GateReport) -> None:
    """TensorBoard: `gate/candidate_<metric>`, `gate/served_<metric>`, `gate/passed` and the reason as text,
    under `<logdir>/<run>/gate`."""
    import tensorflow as tf  # noqa: PLC0415

    writer = tf.summary.create_file_writer(str(Path(run_logdir) / "gate"))
    with writer.as_default(step=0):
        if report.candidate is not None:
            tf.summary.scalar(f"gate/candidate_{report.metric}", report.candidate)
        if report.served is not None:
            tf.summary.scalar(f"gate/served_{report.metric}", report.served)
        tf.summary.scalar("gate/passed", float(report.passed))
        tf.summary.text("gate/report", f"{'PUBLISHED' if report.passed else 'REFUSED'}: {report.reason}")
    writer.close()


@dataclasses.dataclass(frozen=True)
class GateSettings:
    """The gate's flags (see `python -m trainer --help`, group "publishing")."""

    gate: str = "on"  # on | off
    min_score: float | None = None  # --gate-min
    tolerance: float | None = None  # --gate-tolerance; None = one document of the set
    load_check: str = "on"  # on | off
    batch_size: int = 32
    model_config: str | None = None  # release config whose `stable` label is the served version


def guard_publish(tmp_dir: Path, *, eval_set: EvalSet | None, base_path: str | Path, model_name: str,
                  run_name: str, run_logdir: str | Path | None, settings: GateSettings, child=None) -> dict:
    """Runs the load check, then the gate, on a finished export folder before it is renamed into place.

    Both reports go into the folder's model card (`load_check`, `gate`); the gate's also into TensorBoard.
    On refusal the folder is moved to `rejected_dir` and `PublishRefused` (a `GateRefused` or a
    `trainer.loadcheck.LoadCheckFailed`) is raised with the one-line reason, naming where the export went.

    Args:
      child: a `trainer.loadcheck.PythonChild` started before the export was saved (optional; saves its start-up).

    Returns:
      {"load_check": …, "gate": …} as written into the card.
    """
    from trainer import loadcheck  # noqa: PLC0415

    sections: dict = {}
    if settings.load_check == "on":
        try:
            sections["load_check"] = loadcheck.check_fresh_process(tmp_dir, model_name=model_name,
                                                                   child=child).as_dict()
        except loadcheck.LoadCheckFailed as e:
            update_card(tmp_dir, load_check={"ok": False, "reason": str(e)})
            target = move_to_rejected(tmp_dir, rejected_dir(base_path, model_name, run_name))
            raise loadcheck.LoadCheckFailed(f"not published: {e}; the export is in {target}") from None
        log.info("load check: %s loaded and answered %d warm-up request(s) in %.1f s",
                 sections["load_check"]["how"], sections["load_check"]["warmup_requests"],
                 sections["load_check"]["seconds"])
    else:
        sections["load_check"] = {"ok": None, "how": "off (--load-check off)"}
    if settings.gate == "off" or eval_set is None:
        sections["gate"] = {"mode": "off", "passed": None, "reason": "--gate off: published without comparing"}
        update_card(tmp_dir, **sections)
        return sections
    report = evaluate(tmp_dir, base_path, eval_set, min_score=settings.min_score, tolerance=settings.tolerance,
                      batch_size=settings.batch_size, model_config=settings.model_config, model_name=model_name)
    sections["gate"] = {"mode": "on", **report.as_dict()}
    update_card(tmp_dir, **sections)
    if run_logdir is not None:
        write_summary(run_logdir, report)
    if not report.passed:
        target = move_to_rejected(tmp_dir, rejected_dir(base_path, model_name, run_name))
        raise GateRefused(f"gate refused to publish: {report.reason}; the export is in {target}")
    log.info("gate passed in %.1f s: %s", report.seconds, report.reason)
    return sections


def publish_guard(cfg, corpus, run_name: str):
    """The `before_publish` callback `trainer.run.export_run` hands to `export_saved_model`, from the flags.

    The evaluation set is `--gate-data` when given, else the corpus's test split, else its validation split.
    The served version is the `stable` label of the release config beside the base path
    (`<model_base_path>/../models.config`, trainer/release.py) when it exists, else the newest version.
    """
    from trainer import release  # noqa: PLC0415

    eval_set = None
    if cfg.gate == "on":
        eval_set = (load_gate_data(cfg.gate_data, text_columns=cfg.text_columns, label_column=cfg.label_column,
                                   label_names=cfg.label_names, encoding=cfg.encoding)
                    if cfg.gate_data else eval_set_from_corpus(corpus))
    settings = GateSettings(cfg.gate, cfg.gate_min, cfg.gate_tolerance, cfg.load_check, cfg.batch_size,
                            str(release.default_config_path(cfg.model_base_path)))
    logdir = Path(cfg.logdir) / run_name
    from trainer import loadcheck  # noqa: PLC0415

    # Started now, the fresh process imports TensorFlow while the version is being written.
    child = loadcheck.PythonChild() if cfg.load_check == "on" and not loadcheck.model_server() else None

    def before_publish(tmp_dir: Path) -> None:
        started = time.perf_counter()
        guard_publish(tmp_dir, eval_set=eval_set, base_path=cfg.model_base_path, model_name=cfg.model_name,
                      run_name=run_name, run_logdir=logdir, settings=settings, child=child)
        log.info("gate + load check added %.1f s to the export", time.perf_counter() - started)

    return before_publish
