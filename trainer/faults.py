"""Fault injection for tests: SIGKILL this process at a named point, exactly like `kill -9` would.

Set `BERTBC_TEST_KILL_AT` to one point (optionally `POINT@EPOCH` to kill only at that epoch, or `step@N` to kill
right after global step N). Unset in normal use: `maybe_kill` is then a dictionary lookup and nothing else.
`BERTBC_TEST_SIGNAL_AT=SIGINT@N` (or SIGTERM) sends that signal to this process right after global step N, as
a user's Ctrl-C or `kill` would (`maybe_signal`). The kill points are the windows in which a crash could lose or
duplicate work:
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "step",                  # right after a training step (step@N)
    "before_history",        # epoch finished, nothing of it written yet
    "between_saves",         # latest/ committed, best/ not yet saved
    "before_latest",         # history written, latest/ not yet committed
    "export_before_rename",  # the version is fully written in its temporary folder
    "export_after_rename",   # the version is published, run.json not yet marked finished
)


def _target() -> tuple[str, int | None] | None:
    raw = os.environ.get("BERTBC_TEST_KILL_AT", "").strip()
    if not raw:
        return None
    point, _, at = raw.partition("@")
    if point not in POINTS:
        raise ValueError(f"BERTBC_TEST_KILL_AT={raw!r}: unknown point; known: {', '.join(POINTS)}")
    return point, int(at) if at else None


def maybe_kill(point: str, at: int | None = None) -> None:
    """Kills the process if BERTBC_TEST_KILL_AT names `point` (and, if it says `@N`, `at == N`)."""
    target = _target()
    if target is None or target[0] != point:
        return
    if target[1] is None or target[1] == at:
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_signal(step: int) -> None:
    """Sends this process the signal BERTBC_TEST_SIGNAL_AT names (`SIGINT@N`/`SIGTERM@N`) right after step N."""
    raw = os.environ.get("BERTBC_TEST_SIGNAL_AT", "").strip()
    if not raw:
        return
    name, _, at = raw.partition("@")
    if name not in ("SIGINT", "SIGTERM") or not at.isdigit():
        raise ValueError(f"BERTBC_TEST_SIGNAL_AT={raw!r}: expected SIGINT@N or SIGTERM@N")
    if int(at) == step:
        os.kill(os.getpid(), getattr(signal, name))
