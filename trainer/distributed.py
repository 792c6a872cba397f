"""Which devices and processes train together, and who among them may write files.

One process trains on one device by default, on several GPUs with `MirroredStrategy`, and on several machines
with `MultiWorkerMirroredStrategy` when the standard `TF_CONFIG` environment variable names more than one task
(set by a Kubernetes Indexed Job, a Kubeflow TFJob or the compose `train-distributed` profile). Every worker runs
the same command with the same flags; worker 0 (or the `chief` task, if the cluster has one) is the chief:

* only the chief writes TensorBoard logs, run.json, history.json and the exported version;
* checkpoint saves are collective, so every worker saves: the chief into the run's folder, the others into a
  private temporary folder that is removed right after (the pattern of TensorFlow's multi-worker
  custom-training-loop tutorial);
* every worker restores from the chief's checkpoint folder, so `--checkpoint-dir` must be storage that all
  workers see (a shared volume, a ReadWriteMany PVC, or gs://).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

log = logging.getLogger("bertbc.trainer")

# A broadcast string (the run name) travels as a fixed-size int32 vector through one all-reduce.
_BROADCAST_BYTES = 256


@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place in the job, read from TF_CONFIG (a single worker when it is unset)."""

    num_workers: int = 1
    task_type: str = "worker"
    task_index: int = 0
    has_chief_task: bool = False

    @property
    def multi_worker(self) -> bool:
        return self.num_workers > 1

    @property
    def is_chief(self) -> bool:
        if self.has_chief_task:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    @property
    def name(self) -> str:
        return f"{self.task_type}-{self.task_index}"


class ClusterError(ValueError):
    """TF_CONFIG is malformed; the message says which part."""


def cluster_from_env(environ: dict[str, str] | None = None) -> Cluster:
    """Parses TF_CONFIG (`{"cluster": {"worker": [...], "chief": [...]}, "task": {"type", "index"}}`)."""
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not raw:
        return Cluster()
    try:
        config = json.loads(raw)
        cluster = config["cluster"]
        task = config["task"]
        task_type, task_index = str(task["type"]), int(task["index"])
    except (ValueError, KeyError, TypeError) as e:
        raise ClusterError(f"TF_CONFIG is not valid ({e!r}); expected "
                           '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}') from e
    if task_type not in ("worker", "chief"):
        raise ClusterError(f"TF_CONFIG task type {task_type!r} is not supported (worker or chief)")
    members = {k: v for k, v in cluster.items() if k in ("worker", "chief")}
    if task_type not in members or not 0 <= task_index < len(members[task_type]):
        raise ClusterError(f"TF_CONFIG task {task_type}:{task_index} is not in its cluster {members}")
    return Cluster(num_workers=sum(len(v) for v in members.values()), task_type=task_type, task_index=task_index,
                   has_chief_task="chief" in members)


def make_strategy(name: str = "auto", logical_cpus: int = 0, cluster: Cluster | None = None) -> tf.distribute.Strategy:
    """One device by default; MirroredStrategy across local GPUs; MultiWorkerMirroredStrategy across workers.

    Must run before any other TensorFlow op (collective ops are configured at program start-up).

    Args:
      name: "auto" (multi-worker if TF_CONFIG names several tasks, else mirrored iff more than one GPU is
        visible), "default" (one device) or "mirrored" (all local GPUs, or all logical CPUs).
      logical_cpus: if > 1, split the CPU into this many logical devices first (tests MirroredStrategy on a CPU).
      cluster: from `cluster_from_env()`.
    """
    cluster = cluster or Cluster()
    if cluster.multi_worker:
        if name == "default":
            raise ClusterError("--strategy default cannot run with a multi-worker TF_CONFIG; unset TF_CONFIG")
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        log.info("multi-worker training: %s of %d workers (%s), %d replica(s) in sync", cluster.name,
                 cluster.num_workers, "chief" if cluster.is_chief else "not chief", strategy.num_replicas_in_sync)
        return strategy
    if logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    return tf.distribute.get_strategy()


def broadcast_string(strategy: tf.distribute.Strategy, value: str | None) -> str:
    """Every worker gets the chief's `value` (others pass anything): one all-reduce of its bytes.

    Used for decisions only the chief can make consistently, like the run folder's name.
    """
    if strategy.num_replicas_in_sync == 1:
        return value or ""
    data = (value or "").encode()
    if len(data) > _BROADCAST_BYTES:
        raise ValueError(f"cannot broadcast more than {_BROADCAST_BYTES} bytes, got {len(data)}")
    padded = list(data) + [0] * (_BROADCAST_BYTES - len(data))

    @tf.function  # collectives run eagerly warn about their overhead on every call
    def exchange(mine):
        def contribute():
            ctx = tf.distribute.get_replica_context()
            return tf.where(tf.equal(ctx.replica_id_in_sync_group, 0), mine, tf.zeros_like(mine))

        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(contribute), axis=None)

    summed = exchange(tf.constant(padded, tf.int32)).numpy()
    return bytes(int(b) for b in summed if b).decode()


def input_slice(cluster: Cluster, strategy: tf.distribute.Strategy, batch_size: int) -> tuple[int, int] | None:
    """(workers, index) when this worker's share of each global batch is the contiguous slice i of N, else None.

    ``experimental_distribute_dataset`` rebatches each global batch of B into N pieces of B/N and shards them
    by DATA: worker i (its input pipeline id, the task index when the cluster has no separate chief task) gets
    piece i. That holds for one replica per worker and B divisible by N; other layouts tokenize every row.
    """
    n = cluster.num_workers
    if not cluster.multi_worker or cluster.has_chief_task or strategy.num_replicas_in_sync != n or batch_size % n:
        return None
    return n, cluster.task_index


def outcome_text(error: BaseException) -> str:
    """A failure as a broadcastable outcome: "!" + the error's type and message, cut to fit one broadcast."""
    data = f"!{type(error).__name__}: {error}".encode()[:_BROADCAST_BYTES]
    return data.decode(errors="ignore")


def _setting_hashes(settings: dict) -> list[int]:
    """Two independent 12-bit hashes per setting (sorted keys): small enough that sums of squares fit int32."""
    out = []
    for key in sorted(settings):
        digest = hashlib.sha256(json.dumps([key, settings[key]], sort_keys=True, default=str).encode()).digest()
        out += [int.from_bytes(digest[:2], "big") % 4096 + 1, int.from_bytes(digest[2:4], "big") % 4096 + 1]
    return out


def disagreeing_settings(strategy: tf.distribute.Strategy, settings: dict) -> list[str]:
    """The keys of `settings` whose values are not the same on every worker (every worker gets the same answer).

    One all-reduce of (h, h^2) per setting hash h: the values agree iff n * sum(h^2) == sum(h)^2 (equality in
    Cauchy-Schwarz), so each worker learns WHICH settings differ without the values having to travel. Two
    12-bit hashes per key leave a 1 in 16 million chance to miss a difference.

    Args:
      strategy: the training strategy (a no-op with one replica).
      settings: JSON-able values by name; every worker must pass the same keys (same code version).
    """
    if strategy.num_replicas_in_sync == 1:
        return []
    hashes = np.asarray(_setting_hashes(settings), np.int64)
    mine = tf.constant(np.concatenate([hashes, hashes ** 2, [1]]), tf.int32)

    @tf.function
    def exchange(values):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(values)), axis=None)

    summed = exchange(mine).numpy().astype(np.int64)
    k, n = len(hashes), summed[-1]
    differs = n * summed[k:2 * k] != summed[:k] ** 2
    keys = sorted(settings)
    return sorted({keys[i // 2] for i in np.flatnonzero(differs)})


class WorkerFolders:
    """Where this worker writes a collective save: the real folder on the chief, a throw-away one elsewhere."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self._scratch = None if cluster.is_chief else tempfile.mkdtemp(prefix=f"bertbc-{cluster.name}-")

    def path(self, real: str) -> str:
        if self.cluster.is_chief:
            return real
        return os.path.join(self._scratch, os.path.basename(real.rstrip("/")))

    def clean(self) -> None:
        """Removes what a non-chief worker just saved (its copy is never read)."""
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
            os.makedirs(self._scratch, exist_ok=True)

    def close(self) -> None:
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
