"""Learning-rate schedule as a pure function of the step (linear warm-up, then step or cosine)."""
from __future__ import annotations

import math
from typing import Sequence


def lr_factor(step: int, total: int, warmup: int = 0, schedule: str = "cosine",
              milestones: Sequence[int] = (), gamma: float = 0.1) -> float:
    """Multiplier of the base LR at ``step``: linear warm-up over ``warmup`` steps, then
    ``constant``, ``step`` (× gamma at each milestone passed) or ``cosine`` to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "step":
        return gamma ** sum(step >= m for m in milestones)
    if schedule == "cosine":
        span = max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))
    return 1.0
