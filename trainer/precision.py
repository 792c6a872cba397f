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
"""

from __future__ import annotations

import dataclasses
import logging

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
    return settings
