"""Start-up checks that turn a doomed training run into one clear line before any work is done.

Two things fail late and obscurely on clusters and shared GPU hosts:

* an output folder the trainer's uid cannot write (a root-owned NFS export where `fsGroup` is not applied):
  TensorFlow fails at the first checkpoint or summary, minutes in, with a traceback, and a Kubernetes Job
  retries it until its backoffLimit is used up. `check_writable` names the flag and the folder instead;
* several processes on one GPU (two compose workers on a one-GPU host): TensorFlow maps almost all of a
  GPU's memory per process by default, so the second one runs out of memory. `enable_gpu_memory_growth`
  makes each process allocate only what it uses.
"""

from __future__ import annotations

import os
import tempfile


class PreflightError(ValueError):
    """A start-up check failed; the message is one line naming the flag and the folder."""


def check_writable(folders: dict[str, str]) -> None:
    """Checks that this process can create files in every folder, creating missing folders.

    Writes and removes a probe file, because permission bits do not tell the truth on network file
    systems (NFS root_squash, ID mapping) nor for root, which `os.access` always answers True.

    Args:
      folders: flag -> folder, e.g. {"--checkpoint-dir": "/checkpoints", "--logdir": "/logs"}.

    Raises:
      PreflightError: the first folder that cannot be created or written, e.g.
        "--checkpoint-dir /checkpoints: not writable by uid 10001 (gid 10001): Permission denied ...".
    """
    for flag, folder in folders.items():
        try:
            os.makedirs(folder, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".bertbc-write-test-", dir=folder)
            os.close(fd)
            os.remove(probe)
        except OSError as e:
            reason = e.strerror or type(e).__name__
            raise PreflightError(
                f"{flag} {folder}: not writable by uid {os.getuid()} (gid {os.getgid()}): {reason}; give that "
                "uid the folder, or pick another one (Kubernetes: deploy/kubernetes/README.md, Storage ownership)"
            ) from None


def enable_gpu_memory_growth() -> list[str]:
    """Lets every visible GPU's memory grow on demand instead of being mapped whole by this process.

    Must run before any TensorFlow op initializes the GPUs (TensorFlow raises RuntimeError otherwise), so
    call it first thing, before the distribution strategy is created. A no-op without GPUs.

    Returns:
      The names of the GPUs changed, e.g. ["/physical_device:GPU:0"]; [] on a CPU-only host.
    """
    import tensorflow as tf  # noqa: PLC0415 (check_writable must not pay for importing TensorFlow)

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    return [gpu.name for gpu in gpus]
