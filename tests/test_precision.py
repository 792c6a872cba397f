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


@pytest.mark.parametrize("flags, support", [
    ("fpu sse2 avx avx2 fma", "skipped"),                              # this machine: AMD EPYC, AVX2 only
    ("avx2 avx512f avx512bw avx512vl", "emulated"),                    # Skylake/Cascade Lake
    ("avx2 avx_ne_convert", "emulated"),                               # AVX2 with bf16 conversion only
    ("avx2 avx512f avx512bw avx512_bf16", "native"),                   # Cooper Lake, Zen 4
    ("avx2 avx512f avx512_bf16 amx_bf16 amx_tile", "native"),          # Sapphire Rapids
])
def test_bf16_on_cpu_says_what_will_happen(tmp_path, flags, support):
    from trainer.precision import cpu_bf16_support, cpu_flags

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t: x\n")
    got, message = cpu_bf16_support(cpu_flags(cpuinfo))
    assert got == support
    expected = {"skipped": "skips the oneDNN bfloat16 rewrite", "emulated": "AVX512-BF16/AMX",
                "native": "run in bfloat16"}
    assert expected[support] in message


def test_float32_context_resets_and_restores_policy_and_rewrites():
    import tensorflow as tf
    import tf_keras

    from trainer.precision import float32_context

    tf_keras.mixed_precision.set_global_policy("mixed_bfloat16")
    tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})
    try:
        with float32_context():
            assert tf_keras.mixed_precision.global_policy().name == "float32"
            assert not tf.config.optimizer.get_experimental_options()["auto_mixed_precision_onednn_bfloat16"]
            assert tf_keras.layers.Dense(2).compute_dtype == "float32"
        assert tf_keras.mixed_precision.global_policy().name == "mixed_bfloat16"
        assert tf.config.optimizer.get_experimental_options()["auto_mixed_precision_onednn_bfloat16"]
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
        tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": False})
