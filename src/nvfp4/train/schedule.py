"""Learning-rate schedules as pure functions of the step.

A pure function (rather than a stateful torch scheduler) means a resumed run only needs the step
number to continue the schedule exactly, and the schedule can be plotted or tested in isolation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LRSchedule:
    """Linear warmup to ``peak``, then "wsd", "cosine" or "constant" down to ``peak * min_ratio``.

    wsd (warmup-stable-decay, the paper's schedule) holds the peak until the last
    ``decay_fraction`` of the steps and then decays linearly.
    """

    kind: str
    peak: float
    total_steps: int
    warmup_steps: int
    min_ratio: float = 0.1
    decay_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.kind not in ("wsd", "cosine", "constant"):
            raise ValueError(f"unknown schedule {self.kind!r}; use wsd, cosine or constant")
        if self.total_steps < 1 or not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"need 0 <= warmup_steps ({self.warmup_steps}) <= total_steps ({self.total_steps})")

    def __call__(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based: the first update is step 0)."""
        if step < self.warmup_steps:
            return self.peak * (step + 1) / self.warmup_steps
        floor = self.peak * self.min_ratio
        if self.kind == "constant":
            return self.peak
        if self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return floor + (self.peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        decay_steps = max(1, round(self.decay_fraction * self.total_steps)) if self.decay_fraction > 0 else 0
        decay_start = self.total_steps - decay_steps
        if step < decay_start or decay_steps == 0:
            return self.peak
        # Reaches the floor exactly at the final step (step == total_steps - 1).
        progress = min(1.0, (step - decay_start + 1) / decay_steps)
        return self.peak + (floor - self.peak) * progress
