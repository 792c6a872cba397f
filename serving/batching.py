"""Server-side batching limits of TF Serving (`--enable_batching`, `--batching_parameters_file`), for the dev server.

What the real server does, read in tensorflow/serving and TF core (not copied):
  * server.cc parses the file as a text-format `BatchingParameters` (session_bundle_config.proto) and refuses to
    start when the file is given without `--enable_batching`.
  * bundle_factory_util.cc (WrapSessionForBatching): the last `allowed_batch_sizes` entry must equal
    `max_batch_size`, else the model load fails.
  * bundle_factory_util.h (GetQueueOptions): `max_batch_size` -> the queue's `input_batch_size_limit`;
    `enable_large_batch_splitting` -> split, with `max_execution_batch_size` (default: `max_batch_size`).
  * shared_batch_scheduler.h (ValidateBatchTaskQueueCapacity): a request with more rows than
    `input_batch_size_limit` is rejected, split or not: INVALID_ARGUMENT (HTTP 400)
    "Task size N is larger than maximum input batch size M". With splitting, a request up to that limit is cut
    into pieces of at most `max_execution_batch_size` rows that run as separate batches.
  * Defaults when a field is unset (QueueOptions / BasicBatchScheduler): input_batch_size_limit 1000,
    num_batch_threads = number of cores.

The dev server reproduces the limit, the message, the splitting and the number of batches run at once
(`num_batch_threads`). It does not merge rows of concurrent requests into one batch (and so does not reproduce
`batch_timeout_micros`, padding to `allowed_batch_sizes`, or queue-full 503s, whose counts depend on merging).
Without batching, requests still run in pieces of `UNBATCHED_PIECE_ROWS` rows: invisible to clients, it bounds
memory and lets a timed-out request stop between pieces.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from serving.json_tensor import ServingError, invalid

DEFAULT_INPUT_BATCH_SIZE_LIMIT = 1000  # BasicBatchScheduler / SharedBatchScheduler QueueOptions default
UNBATCHED_PIECE_ROWS = 32


def _batching_parameters_class():
    """BatchingParameters message class, declared from session_bundle_config.proto's field list.

    tensorflow-serving-api does not ship that proto; declaring the same fields (with the wrapper types) lets
    text_format reject unknown fields and bad values exactly like the real server's ParseProtoTextFile.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    F = descriptor_pb2.FieldDescriptorProto
    fields = [
        ("max_batch_size", 1, ".google.protobuf.Int64Value", F.LABEL_OPTIONAL),
        ("batch_timeout_micros", 2, ".google.protobuf.Int64Value", F.LABEL_OPTIONAL),
        ("max_enqueued_batches", 3, ".google.protobuf.Int64Value", F.LABEL_OPTIONAL),
        ("num_batch_threads", 4, ".google.protobuf.Int64Value", F.LABEL_OPTIONAL),
        ("thread_pool_name", 5, ".google.protobuf.StringValue", F.LABEL_OPTIONAL),
        ("allowed_batch_sizes", 6, None, F.LABEL_REPEATED),
        ("pad_variable_length_inputs", 7, None, F.LABEL_OPTIONAL),
        ("enable_large_batch_splitting", 8, ".google.protobuf.BoolValue", F.LABEL_OPTIONAL),
        ("max_execution_batch_size", 9, ".google.protobuf.Int64Value", F.LABEL_OPTIONAL),
    ]
    message = descriptor_pb2.DescriptorProto(name="BatchingParameters")
    for name, number, type_name, label in fields:
        field = message.field.add(name=name, number=number, label=label)
        if type_name:
            field.type, field.type_name = F.TYPE_MESSAGE, type_name
        elif name == "allowed_batch_sizes":
            field.type = F.TYPE_INT64
        else:
            field.type = F.TYPE_BOOL
    file = descriptor_pb2.FileDescriptorProto(
        name="bertbc_serving/batching_parameters.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"], message_type=[message],
    )
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


@dataclass(frozen=True)
class BatchPolicy:
    """How a predict request's rows are limited and cut into executed batches.

    Attributes:
      input_limit: most rows one request may have (None: unlimited, batching off).
      piece_rows: most rows run in one signature call.
      num_threads: most signature calls running at once (None: unlimited, batching off).
      split: whether enable_large_batch_splitting is on (only for messages and docs).
    """

    input_limit: int | None = None
    piece_rows: int = UNBATCHED_PIECE_ROWS
    num_threads: int | None = None
    split: bool = False


def load_batching_parameters(path: str) -> BatchPolicy:
    """Parses and checks a --batching_parameters_file; ValueError with the real server's wording on problems."""
    from google.protobuf import text_format

    with open(path, encoding="utf-8") as f:
        text = f.read()
    params = _batching_parameters_class()()
    try:
        text_format.Parse(text, params)
    except text_format.ParseError as err:
        raise ValueError(f"--batching_parameters_file {path}: {err}") from None
    max_size = params.max_batch_size.value if params.HasField("max_batch_size") else DEFAULT_INPUT_BATCH_SIZE_LIMIT
    if max_size <= 0:
        raise ValueError(f"--batching_parameters_file {path}: max_batch_size must be positive, got {max_size}")
    allowed = list(params.allowed_batch_sizes)
    if allowed and allowed[-1] != max_size:
        raise ValueError(
            "Last entry in allowed_batch_sizes must match max_batch_size; last entry was "
            f"{allowed[-1]}; expected {max_size}"
        )
    if any(b <= a for a, b in zip(allowed, allowed[1:], strict=False)):
        raise ValueError("allowed_batch_sizes entries must be monotonically increasing")
    split = params.HasField("enable_large_batch_splitting") and params.enable_large_batch_splitting.value
    piece = max_size
    if split and params.HasField("max_execution_batch_size"):
        piece = params.max_execution_batch_size.value
        if not 0 < piece <= max_size:
            raise ValueError(f"max_execution_batch_size must be in [1, max_batch_size={max_size}], got {piece}")
    threads = params.num_batch_threads.value if params.HasField("num_batch_threads") else (os.cpu_count() or 1)
    return BatchPolicy(input_limit=max_size, piece_rows=piece, num_threads=max(1, threads), split=split)


class Batcher:
    """Runs a signature call on numpy inputs under a BatchPolicy: size check, pieces, concurrency, cancellation."""

    def __init__(self, policy: BatchPolicy = BatchPolicy()):
        self.policy = policy
        self._slots = threading.BoundedSemaphore(policy.num_threads) if policy.num_threads else None

    def check_size(self, rows: int) -> None:
        limit = self.policy.input_limit
        if limit is not None and rows > limit:
            raise invalid(f"Task size {rows} is larger than maximum input batch size {limit}")

    def run(self, call: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], arrays: dict[str, np.ndarray],
            cancelled: threading.Event | None = None) -> dict[str, np.ndarray]:
        """Calls `call` on row pieces of `arrays` and concatenates the outputs along dim 0.

        Inputs without a batch dimension (rank 0) or with unequal dim-0 sizes are passed whole: the signature
        reports the problem like the real server's session would. `cancelled` set between pieces stops the
        request with DEADLINE_EXCEEDED, so a timed-out request frees its worker.
        """
        sizes = {a.shape[0] if a.ndim else -1 for a in arrays.values()}
        rows = sizes.pop() if len(sizes) == 1 else -1
        if rows >= 0:
            self.check_size(rows)
        if rows <= self.policy.piece_rows:
            return self._call(call, arrays, cancelled)
        pieces = []
        for start in range(0, rows, self.policy.piece_rows):
            part = {k: v[start:start + self.policy.piece_rows] for k, v in arrays.items()}
            pieces.append(self._call(call, part, cancelled))
        return {k: np.concatenate([p[k] for p in pieces], axis=0) for k in pieces[0]}

    def _call(self, call, arrays, cancelled):
        if cancelled is not None and cancelled.is_set():
            raise ServingError("DEADLINE_EXCEEDED", "Deadline Exceeded")
        if self._slots is None:
            return call(arrays)
        with self._slots:
            if cancelled is not None and cancelled.is_set():
                raise ServingError("DEADLINE_EXCEEDED", "Deadline Exceeded")
            return call(arrays)
