"""Ctrl-C and `kill` (SIGINT/SIGTERM) during training: save at the next step boundary, then stop with one line.

Python's default SIGINT handler raises KeyboardInterrupt wherever the main thread happens to be, often deep
inside TensorFlow, and SIGTERM kills at once. While training, `StopSignals` replaces both with a handler that
only records the signal; the loop checks it after every step, saves a step checkpoint and raises `Interrupted`,
which the CLI prints as one line and turns into the shell's exit code (130 for SIGINT, 143 for SIGTERM). A
second signal while the save is still under way exits at once (the previous checkpoint is kept).

Example:
    >>> with StopSignals() as signals:      # doctest: +SKIP
    ...     for batch in data:
    ...         train(batch)
    ...         if signals.signum:
    ...             save(); raise Interrupted(signals.signum, epoch, step)
"""

from __future__ import annotations

import os
import signal
import sys
import threading

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """Training stopped on a signal after saving; `str()` is the one line the user sees."""

    def __init__(self, signum: int, epoch: int, step: int):
        super().__init__(f"interrupted at epoch {epoch}, step {step}; saved; rerun the same command to resume")
        self.signum, self.epoch, self.step = signum, epoch, step

    @property
    def exit_code(self) -> int:
        """The shell's convention for death by a signal: 128 + its number (130 SIGINT, 143 SIGTERM)."""
        return 128 + self.signum


class StopSignals:
    """Context manager: SIGINT/SIGTERM set `signum` instead of interrupting; defaults are restored on exit.

    Only the main thread may install handlers; elsewhere (a test calling the trainer from a thread) this does
    nothing and signals keep their usual effect.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in HANDLED:
                self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _record(self, signum, frame) -> None:
        if self.signum is not None:  # impatient second Ctrl-C: stop now, the last save stands
            sys.stderr.write(f"\nsecond {signal.Signals(signum).name}: exiting without saving "
                             "(the last checkpoint is kept; rerun the same command to resume)\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.signum = signum
