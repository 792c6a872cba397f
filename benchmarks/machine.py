"""The machine a benchmark ran on, printed with every figure (machines here differ between sessions)."""

from __future__ import annotations

import datetime
import pathlib
import platform


def cpu_description() -> str:
    """CPU model name and its bf16-relevant flags, from /proc/cpuinfo (what oneDNN can use)."""
    try:
        info = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"unknown CPU (no /proc/cpuinfo), {platform.machine()}"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                "unknown CPU")
    flags = next((set(line.split(":", 1)[1].split()) for line in info.splitlines() if line.startswith("flags")),
                 set())
    cores = sum(1 for line in info.splitlines() if line.startswith("processor"))
    wanted = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    have = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in wanted)
    return f"{name}, {cores} logical CPUs ({have})"


def machine_line() -> str:
    return (f"machine: {cpu_description()}; Python {platform.python_version()}; "
            f"{datetime.date.today().isoformat()}")
