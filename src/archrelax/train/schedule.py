"""Pure functions of the step count: the learning rate, and the steps at which to evaluate or snapshot.

Everything is a function of the global step, so a resumed run needs no scheduler state beyond the step.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["lr_at", "time_steps", "parse_times"]


def parse_times(value: Any) -> Any:
    """Evaluation/snapshot times as written anywhere (``archrelax train --eval-times``, ``TrainConfig``, a spec):
    ``"log:N"`` and ``"every"`` stay strings; ``"0,0.5,2"`` (comma-separated epochs, any number notation) becomes
    ``[0.0, 0.5, 2.0]``; a list or tuple of numbers becomes a list of floats. Anything else is returned unchanged,
    for the caller's check to name (so this never hides a bad value)."""
    from archrelax._typed import parse_float

    if isinstance(value, str):
        text = value.strip()
        if text.startswith("log:") or text == "every":
            return text
        try:
            return [parse_float(t) for t in text.split(",") if t.strip()]
        except ValueError:
            return value
    if isinstance(value, (list, tuple)) and all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in value):
        return [float(t) for t in value]
    return value


def lr_at(step: int, steps_per_epoch: int, *, lr: float, schedule: str = "constant", warmup_epochs: float = 0.0,
          step_size: float = 30.0, gamma: float = 0.1, total_epochs: float = 1.0) -> float:
    """Learning rate for the update that follows ``step`` completed updates."""
    epoch = step / steps_per_epoch
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return lr * (step + 1) / (warmup_epochs * steps_per_epoch)  # linear, never exactly 0
    if schedule == "constant":
        return lr
    if schedule == "step":
        return lr * gamma ** math.floor((epoch - warmup_epochs) / step_size)
    if schedule == "cosine":
        span = max(total_epochs - warmup_epochs, 1e-12)
        return 0.5 * lr * (1 + math.cos(math.pi * min(1.0, (epoch - warmup_epochs) / span)))
    raise ValueError(f"schedule {schedule!r} is not valid; choose from ('constant', 'step', 'cosine')")


def time_steps(spec: Any, steps_per_epoch: int, total_steps: int, *, name: str = "times") -> list[int]:
    """Steps (sorted, unique, within [0, total_steps]) for a time spec.

    ``"log:N"``: 0, the end, and N-2 log-spaced times between one step and the end, rounded to whole
    steps; early times that would round to the same step are spread to consecutive steps, so there are
    exactly N times whenever the run has at least N-1 steps. ``"every"``: 0 and every
    epoch end (plus the end). A list: those epochs, rounded to the nearest step; epochs past the end are
    an error, so a typo does not silently drop a snapshot.
    """
    if isinstance(spec, str) and spec == "every":
        steps = list(range(0, total_steps + 1, steps_per_epoch)) + [total_steps]
    elif isinstance(spec, str) and spec.startswith("log:"):
        n = int(spec[4:])
        steps = [0, total_steps]
        if total_steps > 1 and n > 2:
            grid = np.rint(np.geomspace(1, total_steps, n - 1)).astype(int)
            # early points collide after rounding (1, 1.4, 2, ...): push each to at least its predecessor + 1
            k = np.arange(len(grid))
            grid = np.minimum(np.maximum.accumulate(grid - k) + k, total_steps)
            steps += grid.tolist()
    else:
        steps = [int(round(float(t) * steps_per_epoch)) for t in spec]
        late = [t for t, s in zip(spec, steps) if s > total_steps]
        if late:
            raise ValueError(f"{name} {late} lie past the end of the run ({total_steps / steps_per_epoch:g} epochs)")
    return sorted(set(steps))
