"""Mixed-precision options per device (no GPU needed: the table is data)."""

from __future__ import annotations

import pytest

from trainer.precision import PrecisionSettings, precision_settings


@pytest.mark.parametrize("mode, on_gpu, expected", [
    ("off", False, PrecisionSettings("float32", {}, False)),
    ("off", True, PrecisionSettings("float32", {}, False)),
    ("bf16", False, PrecisionSettings("mixed_bfloat16", {"auto_mixed_precision_onednn_bfloat16": True}, False)),
    # The float16 Grappler pass must never run for bf16 on a GPU: it would cast to float16 without loss scaling.
    ("bf16", True, PrecisionSettings("mixed_bfloat16", {}, False)),
    ("fp16", True, PrecisionSettings("mixed_float16", {"auto_mixed_precision": True}, True)),
    ("fp16", False, PrecisionSettings("mixed_float16", {}, True)),
])
def test_precision_settings_per_device(mode, on_gpu, expected):
    assert precision_settings(mode, on_gpu=on_gpu) == expected


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="--mixed-precision"):
        precision_settings("int8", on_gpu=False)
