"""The whole run's time left: remaining steps, validations and the export, from times measured in this process.

tqdm's estimate covers the current epoch only; a user wants to know when the model will be published.

Example:
    >>> clock = RunClock(steps_per_epoch=10, epochs=2)
    >>> for _ in range(3):
    ...     clock.record_step(2.0)
    >>> clock.record_validation(5.0)
    >>> clock.remaining(epoch=1, steps_done=10)   # 2 validations + epoch 2's 10 steps + the export
    90.0
"""

from __future__ import annotations

import dataclasses

# Until a validation is measured it is guessed as this share of an epoch's training time (forward only, over
# fewer documents in more windows); the export (rebuild check, save, warm-up, op check) gets a fixed allowance.
VALIDATION_SHARE_GUESS = 0.25
EXPORT_SECONDS_GUESS = 60.0


@dataclasses.dataclass
class RunClock:
    """Running means of step and validation wall times; the first step (tracing) is left out."""

    steps_per_epoch: int
    epochs: int
    export_seconds: float = EXPORT_SECONDS_GUESS
    _step_total: float = 0.0
    _steps: int = 0
    _skipped_first: bool = False
    validation_seconds: float | None = None

    def record_step(self, seconds: float) -> None:
        if not self._skipped_first:
            self._skipped_first = True
            return
        self._step_total += seconds
        self._steps += 1

    def record_validation(self, seconds: float) -> None:
        self.validation_seconds = seconds

    @property
    def step_seconds(self) -> float | None:
        return self._step_total / self._steps if self._steps else None

    def remaining(self, *, epoch: int, steps_done: int) -> float | None:
        """Seconds left after `steps_done` steps of `epoch` (1-based), its validation included; None until a
        step time is known."""
        if self.step_seconds is None:
            return None
        steps_left = max(self.steps_per_epoch - steps_done, 0) + (self.epochs - epoch) * self.steps_per_epoch
        validation = self.validation_seconds
        if validation is None:
            validation = VALIDATION_SHARE_GUESS * self.steps_per_epoch * self.step_seconds
        validations_left = self.epochs - epoch + 1
        return steps_left * self.step_seconds + validations_left * validation + self.export_seconds


def format_duration(seconds: float | None) -> str:
    """`3725` -> `1h02m`, `95` -> `1m35s`, None -> `?`."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
