"""Mixed precision per device: which Keras policy, which Grappler rewrite, and whether the loss is scaled.

The encoder is a loaded SavedModel, so a Keras policy alone only changes the dense head; a Grappler rewrite
is what casts the encoder's matmuls. The rewrites are device-specific (tensorflow
`core/grappler/optimizers/auto_mixed_precision.cc`):

| --mixed-precision | device | Keras policy     | Grappler rewrite                          | loss scaling |
|-------------------|--------|------------------|-------------------------------------------|--------------|
| off               | any    | float32          | none                                      | no           |
| bf16              | CPU    | mixed_bfloat16   | auto_mixed_precision_onednn_bfloat16      | no           |
| bf16              | GPU    | mixed_bfloat16   | none (the float16 pass is not for bf16)   | no           |
| fp16              | GPU    | mixed_float16    | auto_mixed_precision (the float16 pass)   | yes          |
| fp16              | CPU    | mixed_float16    | none (no fast float16 on CPUs)            | yes          |

bf16 needs no loss scaling: it has float32's exponent range. The head and the loss stay float32 either way.

On a CPU, what the bf16 rewrite really does depends on the CPU (``cpu_bf16_support``, from /proc/cpuinfo):
TensorFlow runs the oneDNN pass only with AVX512F or AVX-NE-CONVERT (``IsBF16SupportedByOneDNNOnThisCPU`` in
``core/util/util.cc``) and skips it otherwise; oneDNN computes bf16 natively only with AVX512-BF16 or AMX-BF16,
and emulates it (slower than float32) with AVX512F alone. The start-up log says which case applies.

Exports never inherit any of this: ``float32_context`` resets the policy and the rewrites while the serving
graph is built and checked (``--export-precision`` alone decides its numerics).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path

log = logging.getLogger("bertbc.trainer")

MODES = ("off", "bf16", "fp16")


@dataclasses.dataclass(frozen=True)
class PrecisionSettings:
    policy: str
    grappler_options: dict[str, bool]
    loss_scaling: bool


def precision_settings(mode: str, *, on_gpu: bool) -> PrecisionSettings:
    """The table above as data (pure, so it is tested for both devices without a GPU)."""
    if mode == "off":
        return PrecisionSettings("float32", {}, False)
    if mode == "bf16":
        rewrite = {} if on_gpu else {"auto_mixed_precision_onednn_bfloat16": True}
        return PrecisionSettings("mixed_bfloat16", rewrite, False)
    if mode == "fp16":
        rewrite = {"auto_mixed_precision": True} if on_gpu else {}
        return PrecisionSettings("mixed_float16", rewrite, True)
    raise ValueError(f"--mixed-precision must be one of {MODES}, got {mode!r}")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The feature flags of the first CPU in /proc/cpuinfo (empty where the file does not exist)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def cpu_bf16_support(flags: frozenset[str]) -> tuple[str, str]:
    """("native" | "emulated" | "skipped", one-line explanation) for the bf16 rewrite on a CPU with `flags`."""
    native = sorted(flags & {"avx512_bf16", "amx_bf16"})
    if native:
        return "native", f"this CPU has {'/'.join(native)}: the encoder's matmuls run in bfloat16"
    if "avx512f" in flags:
        return "emulated", ("this CPU has AVX512F but no AVX512-BF16/AMX: oneDNN emulates bfloat16, expect "
                            "training SLOWER than float32 (use --mixed-precision off)")
    if "avx_ne_convert" in flags:
        return "emulated", ("this CPU has AVX-NE-CONVERT but no AVX512-BF16/AMX: bfloat16 is converted, computed "
                            "in float32; expect no speed-up")
    return "skipped", ("this CPU has no AVX512F: TensorFlow skips the oneDNN bfloat16 rewrite, the encoder runs in "
                       "float32 and only the Keras layers (pooling, dropout) compute in bfloat16; no speed-up")


@contextlib.contextmanager
def float32_context():
    """Runs its block with the Keras policy float32 and both mixed-precision rewrites off, then restores both.

    The export builds its classifier and serving graph in this block, so a model trained with
    --mixed-precision is exported with the float32 math an --export-only run uses (the values are the same
    float32 checkpoint either way).
    """
    import tensorflow as tf  # noqa: PLC0415
    import tf_keras  # noqa: PLC0415

    policy = tf_keras.mixed_precision.global_policy()
    options = tf.config.optimizer.get_experimental_options()
    off = {"auto_mixed_precision": False, "auto_mixed_precision_onednn_bfloat16": False}
    tf_keras.mixed_precision.set_global_policy("float32")
    tf.config.optimizer.set_experimental_options(off)
    try:
        yield
    finally:
        tf_keras.mixed_precision.set_global_policy(policy)
        tf.config.optimizer.set_experimental_options({**off, **{k: v for k, v in options.items() if k in off}})


def configure_precision(mode: str) -> PrecisionSettings:
    """Applies `precision_settings` for the devices TensorFlow sees; call before building the model."""
    import tensorflow as tf  # noqa: PLC0415
    import tf_keras  # noqa: PLC0415

    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    settings = precision_settings(mode, on_gpu=on_gpu)
    tf_keras.mixed_precision.set_global_policy(settings.policy)
    if settings.grappler_options:
        tf.config.optimizer.set_experimental_options(settings.grappler_options)
    if mode == "fp16" and not on_gpu:
        log.warning("--mixed-precision fp16 on a CPU only changes the head (no float16 rewrite for CPUs); "
                    "use bf16 on CPUs with AVX512-BF16 or AMX")
    if mode != "off":
        log.info("mixed precision %s on %s: policy %s, rewrite %s, loss scaling %s", mode,
                 "GPU" if on_gpu else "CPU", settings.policy, sorted(settings.grappler_options) or "none",
                 settings.loss_scaling)
    if mode == "bf16" and not on_gpu:
        support, message = cpu_bf16_support(cpu_flags())
        (log.info if support == "native" else log.warning)("--mixed-precision bf16: %s", message)
    return settings
