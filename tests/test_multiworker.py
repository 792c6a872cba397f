"""Multi-worker training: two real trainer processes on 127.0.0.1 ports with TF_CONFIG, as a Kubernetes Indexed
Job, a TFJob or the compose `train-distributed` profile would start them."""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, latest_weights, run_trainer, toy_config, trainer_flags, write_toy_corpus
from trainer.distributed import ClusterError, cluster_from_env

WORKER_TIMEOUT_S = 420


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def _start_workers(flags: list[str], tmp: Path, env_per_worker: list[dict] | None = None) -> list[subprocess.Popen]:
    ports = _free_ports(2)
    procs = []
    for i in range(2):
        env = {**os.environ, "TF_CONFIG": _tf_config(ports, i), **((env_per_worker or [{}, {}])[i])}
        log = open(tmp / f"worker-{i}.log", "a")  # noqa: SIM115 (closed with the process)
        procs.append(subprocess.Popen([sys.executable, "-m", "trainer", *flags], cwd=REPO_ROOT, env=env,
                                      stdout=log, stderr=subprocess.STDOUT))
    return procs


def _wait(procs: list[subprocess.Popen], timeout: float) -> list[int | None]:
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    return [p.poll() for p in procs]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()


def _run_two_workers(flags: list[str], tmp: Path) -> list[str]:
    """Starts two workers, waits for both to succeed, and returns their logs."""
    procs = _start_workers(flags, tmp)
    try:
        codes = _wait(procs, WORKER_TIMEOUT_S)
    finally:
        _stop(procs)
    logs = [(tmp / f"worker-{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], f"exit codes {codes}\n--- worker 0\n{logs[0][-3000:]}\n--- worker 1\n{logs[1][-3000:]}"
    return logs


@pytest.fixture(scope="module")
def setup(tmp_path_factory, cache_dir, deterministic_encoder):
    encoder, preprocess = deterministic_encoder
    corpus = write_toy_corpus(tmp_path_factory.mktemp("mw") / "bbc", docs_per_class=16)
    return corpus, encoder, preprocess


def _flags(cfg, encoder, preprocess) -> list[str]:
    return [*trainer_flags(cfg), "--encoder-handle", encoder, "--preprocess-handle", preprocess, "--dropout", "0"]


def test_two_workers_train_publish_once_and_match_one_process(setup, tmp_path, cache_dir):
    corpus, encoder, preprocess = setup
    cfg = toy_config(tmp_path / "mw", corpus, cache_dir, epochs=2)
    logs = _run_two_workers(_flags(cfg, encoder, preprocess), tmp_path)
    assert "2 replica(s)" in logs[0] and f"the chief exported run {Path(cfg.checkpoint_dir).iterdir().__next__().name} as version 1" in logs[1]
    assert "have crashed" not in logs[0] and "eagerly" not in logs[0] + logs[1]  # no alarming noise at the end

    assert sorted(p.name for p in Path(cfg.model_base_path).iterdir()) == ["1"]
    runs = list(Path(cfg.checkpoint_dir).iterdir())
    assert len(runs) == 1, runs
    history = json.loads((runs[0] / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert [p.name for p in Path(cfg.logdir).iterdir()] == [runs[0].name]  # only the chief logged

    # The same global batches on one process give the same weights.
    single = toy_config(tmp_path / "single", corpus, cache_dir, epochs=2)
    done = run_trainer(_flags(single, encoder, preprocess))
    assert done.returncode == 0, done.stderr[-3000:]
    single_run = next(Path(single.checkpoint_dir).iterdir())
    want = latest_weights(single_run)
    got = latest_weights(runs[0])
    assert want.keys() == got.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=2e-5, err_msg=key)


def test_two_workers_stream_an_own_csv_and_match_one_process(setup, tmp_path, cache_dir):
    """An own corpus streams its training rows from the file on every worker (DATA sharding: each worker tokenizes
    its slice of every global batch) and trains the weights one process trains."""
    corpus, encoder, preprocess = setup
    subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "bbc_to_csv.py"), str(corpus), str(tmp_path)],
                   check=True, capture_output=True)
    data = tmp_path / "bbc.csv"
    own = ["--data", str(data), "--text-column", "title", "--text-column", "body", "--label-column", "label",
           "--label-names", str(tmp_path / "bbc-label-names.txt")]
    cfg = toy_config(tmp_path / "mw", corpus, cache_dir, epochs=1)
    logs = _run_two_workers([*_flags(cfg, encoder, preprocess), *own], tmp_path)
    assert all("training rows are streamed from the files every epoch" in log for log in logs)
    single = toy_config(tmp_path / "single", corpus, cache_dir, epochs=1)
    done = run_trainer([*_flags(single, encoder, preprocess), *own])
    assert done.returncode == 0, done.stderr[-3000:]
    want = latest_weights(next(Path(single.checkpoint_dir).iterdir()))
    got = latest_weights(next(Path(cfg.checkpoint_dir).iterdir()))
    assert want.keys() == got.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=2e-5, err_msg=key)


def test_two_workers_shard_several_files_and_train_every_row_once(setup, tmp_path, cache_dir):
    """Three CSV files of uneven size: each worker reads only its files (FILE sharding). The worker with fewer rows
    runs out first and feeds empty batches while the other finishes. Stopped by SIGTERM mid-epoch and restarted,
    each worker skips what it trained: the epoch trains every row exactly once."""
    corpus, encoder, preprocess = setup
    subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "bbc_to_csv.py"), str(corpus), str(tmp_path)],
                   check=True, capture_output=True)
    with open(tmp_path / "bbc.csv", newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    cuts = [0, len(rows) * 6 // 10, len(rows) * 85 // 100, len(rows)]  # 60%, 25%, 15% of the rows
    for i, (start, stop) in enumerate(itertools.pairwise(cuts)):
        with open(tmp_path / f"part-{i}.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([header, *rows[start:stop]])
    own = ["--data", str(tmp_path / "part-*.csv"), "--text-column", "title", "--text-column", "body",
           "--label-column", "label", "--label-names", str(tmp_path / "bbc-label-names.txt")]
    cfg = toy_config(tmp_path / "mw", corpus, cache_dir, epochs=1)
    flags = [*_flags(cfg, encoder, preprocess), *own]
    procs = _start_workers(flags, tmp_path, env_per_worker=[{}, {"BERTBC_TEST_SIGNAL_AT": "SIGTERM@1"}])
    try:
        codes = _wait(procs, WORKER_TIMEOUT_S)
    finally:
        _stop(procs)
    assert codes == [143, 143], (codes, _logs(tmp_path)[0][-3000:])
    logs = _run_two_workers(flags, tmp_path)
    assert "resuming epoch 1 after step 2/" in logs[0]
    assert all("input sharding: FILE, 3 files over 2 workers (worker 0: 1 file(s)" in log for log in logs), logs[0]
    train_rows, steps = map(int, re.search(r"starting run \S+: (\d+) train / .* (\d+) steps per epoch",
                                           logs[0]).groups())
    per_worker = [int(n) for n in re.findall(r"worker \d: \d file\(s\), (\d+) rows", logs[0])[:2]]
    assert sum(per_worker) == train_rows and steps == math.ceil(max(per_worker) / (cfg.batch_size // 2))
    assert steps > math.ceil(min(per_worker) / (cfg.batch_size // 2))  # one worker fed empty batches at the end
    run_dir = next(Path(cfg.checkpoint_dir).iterdir())
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["train_rows"] for h in history] == [train_rows]  # every training row once, across both workers
    assert json.loads((run_dir / "run.json").read_text())["settings"]["input_sharding"] == "file: 2 workers"
    assert sorted(p.name for p in Path(cfg.model_base_path).iterdir()) == ["1"]


def test_killed_worker_then_restart_resumes_from_the_checkpoint(setup, tmp_path, cache_dir):
    corpus, encoder, preprocess = setup
    cfg = toy_config(tmp_path / "mw", corpus, cache_dir, epochs=3)
    flags = _flags(cfg, encoder, preprocess)
    # Worker 1 dies with SIGKILL in the middle of epoch 2 (5 steps per epoch); the chief must not hang forever.
    procs = _start_workers(flags, tmp_path, env_per_worker=[{}, {"BERTBC_TEST_KILL_AT": "step@7"}])
    try:
        codes = _wait(procs, WORKER_TIMEOUT_S)
    finally:
        _stop(procs)  # what a Job controller does to a stuck pod
    assert codes[1] == -signal.SIGKILL, codes
    run_dir = next(Path(cfg.checkpoint_dir).iterdir())
    assert [h["epoch"] for h in json.loads((run_dir / "history.json").read_text())] == [1]

    procs = _start_workers(flags, tmp_path)  # the job restarts every worker with the same command
    try:
        codes = _wait(procs, WORKER_TIMEOUT_S)
    finally:
        _stop(procs)
    log0 = (tmp_path / "worker-0.log").read_text()
    assert codes == [0, 0], log0[-3000:]
    assert "resuming run" in log0 and "after epoch 1" in log0
    assert [h["epoch"] for h in json.loads((run_dir / "history.json").read_text())] == [1, 2, 3]
    assert sorted(p.name for p in Path(cfg.model_base_path).iterdir()) == ["1"]


@pytest.mark.parametrize("tf_config, message", [
    ("{not json", "TF_CONFIG is not valid"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "not supported"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "is not in its cluster"),
])
def test_bad_tf_config_is_a_clear_error(tf_config, message):
    with pytest.raises(ClusterError, match=message):
        cluster_from_env({"TF_CONFIG": tf_config})


def test_cluster_roles():
    two = '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": %d}}'
    assert cluster_from_env({"TF_CONFIG": two % 0}).is_chief
    assert not cluster_from_env({"TF_CONFIG": two % 1}).is_chief
    with_chief = '{"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}'
    assert not cluster_from_env({"TF_CONFIG": with_chief}).is_chief
    assert cluster_from_env({"TF_CONFIG": with_chief}).num_workers == 2
    assert not cluster_from_env({}).multi_worker


def _logs(tmp: Path) -> list[str]:
    return [(tmp / f"worker-{i}.log").read_text() for i in range(2)]


def test_workers_that_disagree_with_the_chief_all_refuse_naming_the_setting(setup, tmp_path, cache_dir):
    """A worker started with another --seed would train on an inconsistent shard: every worker refuses, before
    training, naming the setting."""
    corpus, encoder, preprocess = setup
    cfg = toy_config(tmp_path / "mw", corpus, cache_dir, epochs=1)
    flags = _flags(cfg, encoder, preprocess)
    ports = _free_ports(2)
    procs = []
    for i, extra in enumerate(([], ["--seed", "7"])):
        env = {**os.environ, "TF_CONFIG": _tf_config(ports, i)}
        log = open(tmp_path / f"worker-{i}.log", "a")  # noqa: SIM115 (closed with the process)
        procs.append(subprocess.Popen([sys.executable, "-m", "trainer", *flags, *extra], cwd=REPO_ROOT, env=env,
                                      stdout=log, stderr=subprocess.STDOUT))
    try:
        codes = _wait(procs, 240)
    finally:
        _stop(procs)
    logs = _logs(tmp_path)
    assert codes == [2, 2], f"exit codes {codes}\n--- worker 0\n{logs[0][-2000:]}\n--- worker 1\n{logs[1][-2000:]}"
    assert "the workers disagree on --seed (this worker: --seed = 42)" in logs[0]
    assert "the workers disagree on --seed (this worker: --seed = 7)" in logs[1]
    assert not Path(cfg.checkpoint_dir).exists() or not list(Path(cfg.checkpoint_dir).iterdir())


def test_a_chief_failing_after_training_ends_every_worker_with_its_error(setup, tmp_path, cache_dir):
    """The export fails on the chief (its export check, made to fail): the workers, waiting for the outcome,
    must not block forever; they exit non-zero with the chief's error in their log."""
    from trainer.export_check import FAIL_FOR_TESTS

    corpus, encoder, preprocess = setup
    cfg = toy_config(tmp_path / "mw", corpus, cache_dir, epochs=1)
    procs = _start_workers([*_flags(cfg, encoder, preprocess), "--load-check", "off"], tmp_path,
                           env_per_worker=[{FAIL_FOR_TESTS: "1"}, {}])
    started = time.monotonic()
    try:
        codes = _wait(procs, WORKER_TIMEOUT_S)
    finally:
        _stop(procs)
    logs = _logs(tmp_path)
    assert codes == [2, 2], (codes, logs[0][-2000:], logs[1][-2000:])
    assert time.monotonic() - started < WORKER_TIMEOUT_S
    assert "finished training run" in logs[1] and "the chief failed after training run" in logs[1], logs[1][-2000:]
    assert f"RunError: export check: failed on purpose ({FAIL_FOR_TESTS} is set)" in logs[1]
    assert not Path(cfg.model_base_path).exists() or not list(Path(cfg.model_base_path).glob("[0-9]*"))


def test_each_worker_tokenizes_only_its_slice_of_a_global_batch(tiny_encoder):
    """Worker i of N keeps rows [i*B/N, (i+1)*B/N) of every global batch (what DATA sharding hands it); the other
    rows are blanked before tokenizing instead of tokenized and thrown away. Labels and order are untouched."""
    from trainer.distributed import Cluster, input_slice
    from trainer.pipeline import make_train_dataset
    from trainer.preprocessing import Preprocessor

    pre = Preprocessor(tiny_encoder.preprocess_handle, seq_length=16)
    texts, labels = [f"word {'word ' * i}".encode() for i in range(7)], list(range(7))
    everything = list(make_train_dataset(texts, labels, pre, batch_size=4, seed=1))
    mine = list(make_train_dataset(texts, labels, pre, batch_size=4, seed=1, worker_slice=(2, 1)))
    for (full, y_full), (part, y_part) in zip(everything, mine, strict=True):
        np.testing.assert_array_equal(y_full, y_part)
        kept = np.arange(len(y_full)) // 2 == 1
        np.testing.assert_array_equal(part["input_word_ids"].numpy()[kept], full["input_word_ids"].numpy()[kept])
        assert (part["input_mask"].numpy()[~kept].sum(axis=1) == 2).all()  # [CLS] [SEP] of an empty text

    class OneReplicaEach:
        num_replicas_in_sync = 2

    two = Cluster(num_workers=2, task_index=1)
    assert input_slice(two, OneReplicaEach(), 16) == (2, 1)
    assert input_slice(two, OneReplicaEach(), 15) is None  # B not divisible by N: every row
    assert input_slice(Cluster(), OneReplicaEach(), 16) is None
    assert input_slice(Cluster(num_workers=2, has_chief_task=True, task_type="chief"), OneReplicaEach(), 16) is None
