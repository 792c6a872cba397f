"""How the training rows of a multi-worker job are divided: by FILE (each worker reads its own files) or by DATA.

DATA sharding (tf.distribute's default for our pipelines) has every worker read and shuffle every row in the same
seeded order and train on its slice of each global batch: results equal one process, but every worker reads the
whole corpus. FILE sharding gives each worker whole files, so each reads only 1/N of the corpus. tf.data's FILE
auto-shard policy works on file-reader ops (TFRecord, TextLine), and our readers are pyarrow behind a Python
generator, so the division is made here and fed through `distribute_datasets_from_function`:

* files go to workers by training rows, largest first, each to the worker with the fewest rows so far (the row
  counts come from the corpus's counting pass, so every worker computes the same assignment);
* each replica batches `global batch / replicas`; a global step takes one such batch per replica;
* an epoch lasts as many steps as the worker with the most rows needs. A worker that ran out feeds empty batches
  meanwhile (MultiWorkerMirroredStrategy's partial-batch handling), and the loss is averaged over the rows that
  were there, so every training row is trained exactly once per epoch.
"""

from __future__ import annotations

import dataclasses
import logging
import math

log = logging.getLogger("bertbc.trainer")

# Above this ratio of the busiest worker's rows to the mean, `auto` logs that DATA sharding would be faster.
_IMBALANCE_WARNING = 1.25


class ShardingError(ValueError):
    """--input-sharding file cannot apply to this job; the message says why, in one line."""


@dataclasses.dataclass(frozen=True)
class FileShards:
    """Each worker's training files and rows, and what a global step takes from each."""

    files: tuple[tuple[str, ...], ...]  # per worker (input pipeline id), in the corpus's file order
    rows: tuple[int, ...]  # training rows per worker
    replica_batch: int  # rows per replica per step: the global batch / replicas in sync
    replicas_per_worker: int

    @property
    def steps_per_epoch(self) -> int:
        """Global steps until the worker with the most rows has trained them all."""
        return max(math.ceil(math.ceil(n / self.replica_batch) / self.replicas_per_worker) for n in self.rows)

    @property
    def imbalance(self) -> float:
        """The busiest worker's rows over the mean (1.0: perfectly even)."""
        return max(self.rows) / (sum(self.rows) / len(self.rows))

    def describe(self) -> str:
        return "; ".join(f"worker {i}: {len(f)} file(s), {n:,} rows" for i, (f, n) in
                         enumerate(zip(self.files, self.rows, strict=True)))


def assign_files(file_rows: tuple[tuple[str, int], ...], workers: int) -> tuple[tuple[str, ...], ...]:
    """Files to workers, largest first onto the least-loaded worker (ties: the lower index); deterministic."""
    order = sorted(range(len(file_rows)), key=lambda i: (-file_rows[i][1], i))
    load = [0] * workers
    owned: list[list[int]] = [[] for _ in range(workers)]
    for i in order:
        w = min(range(workers), key=lambda k: (load[k], k))
        owned[w].append(i)
        load[w] += file_rows[i][1]
    return tuple(tuple(file_rows[i][0] for i in sorted(ids)) for ids in owned)


def plan_input_sharding(policy: str, *, file_rows: tuple[tuple[str, int], ...], num_workers: int,
                        replicas: int, batch_size: int) -> FileShards | None:
    """FILE shards for this job, or None for DATA sharding.

    Args:
      policy: "auto" (FILE when the job has several workers and the training rows come from at least as many
        files as workers, and the global batch divides among the replicas; else DATA), "file" (refuse when it
        cannot apply) or "data".
      file_rows: (file, training rows) of a streamed corpus; empty when the corpus is held in memory (BBC's
        class folders, or a corpus with no per-file counts), which only DATA sharding can divide.
      num_workers: workers in the job (1: nothing to shard).
      replicas: replicas in sync (all workers).
      batch_size: the global batch.

    Raises:
      ShardingError: policy "file" with a job or corpus it cannot apply to.
    """
    if policy == "data" or num_workers < 2:
        return None
    files = tuple((f, n) for f, n in file_rows if n > 0)
    why_not = None
    if not file_rows:
        why_not = "the training rows are not streamed from data files (class folders train by DATA)"
    elif len(files) < num_workers:
        why_not = f"the training rows come from {len(files)} file(s), fewer than the {num_workers} workers"
    elif batch_size % replicas:
        why_not = f"--batch-size {batch_size} does not divide among {replicas} replicas"
    elif replicas % num_workers:
        why_not = f"{replicas} replicas are not the same number on each of {num_workers} workers"
    if why_not:
        if policy == "file":
            raise ShardingError(f"--input-sharding file cannot apply: {why_not}; use --input-sharding data")
        log.info("input sharding: DATA (every worker reads every row, trains its slice of each batch): %s", why_not)
        return None
    owners, rows = assign_files(files, num_workers), dict(files)
    shards = FileShards(owners, tuple(sum(rows[f] for f in owned) for owned in owners), batch_size // replicas,
                        replicas // num_workers)
    log.info("input sharding: FILE, %d files over %d workers (%s); %d steps per epoch, rows imbalance %.2f",
             len(files), num_workers, shards.describe(), shards.steps_per_epoch, shards.imbalance)
    if shards.imbalance > _IMBALANCE_WARNING:
        log.warning("the workers' files hold uneven row counts (busiest %.2fx the mean): workers that finish early "
                    "wait with empty batches; split the data into more, even files, or pass --input-sharding data",
                    shards.imbalance)
    return shards
