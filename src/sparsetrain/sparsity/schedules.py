"""Schedules as pure functions of the step: mask-update steps, drop fraction, GMP sparsity.

Steps are 0-based iteration indices. All step-anchored values scale with the extended-training
multiplier through :func:`scale_steps`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ..errors import ConfigError

DECAYS = ("cosine", "constant", "linear")


def scale_steps(steps: Optional[int], multiplier: float) -> Optional[int]:
    """Extended training (RigL paper §4.1, '2×/5×'): every step-anchored value scales by M."""
    return None if steps is None else int(round(steps * multiplier))


@dataclass(frozen=True)
class UpdateSchedule:
    """Mask updates every ``delta_t`` steps for ``start <= step < end``, first one at ``start``.

    Paper Algorithm 1 updates when t mod ΔT = 0 and t < T_end; we skip t = 0 by default
    (start = ΔT) because an update before any training step only reshuffles the random init.
    """

    delta_t: int
    start: int
    end: int

    @classmethod
    def build(cls, total_steps: int, delta_t: int = 100, start: Optional[int] = None,
              end: Optional[int] = None, end_fraction: float = 0.75) -> "UpdateSchedule":
        """Validate and resolve defaults: start = ΔT, end = round(end_fraction · total)."""
        if total_steps is None or int(total_steps) <= 0:
            raise ConfigError(f"total_steps must be a positive integer, got {total_steps}")
        if int(delta_t) <= 0:
            raise ConfigError(f"delta_t (ΔT) must be a positive number of steps, got {delta_t}")
        if end is None:
            if not 0.0 < end_fraction <= 1.0:
                raise ConfigError(f"end_fraction must be in (0, 1], got {end_fraction}")
            end = int(round(end_fraction * total_steps))
        if end > total_steps:
            raise ConfigError(
                f"T_end ({end}) is beyond total_steps ({total_steps}); lower end or end_fraction"
            )
        start = int(delta_t) if start is None else int(start)
        if start < 0:
            raise ConfigError(f"start step must be >= 0, got {start}")
        return cls(int(delta_t), start, int(end))

    def is_update(self, step: int) -> bool:
        return self.start <= step < self.end and (step - self.start) % self.delta_t == 0


def drop_fraction(step: int, alpha: float, end: int, decay: str = "cosine") -> float:
    """Fraction of active weights to drop at ``step``.

    cosine (paper eq. 1): α/2·(1 + cos(π·t/T_end)); constant: α; linear: α·(1 − t/T_end).
    ``t`` is clipped to [0, T_end].
    """
    if decay not in DECAYS:
        raise ConfigError(f"unknown drop-fraction decay '{decay}'; choose one of: {', '.join(DECAYS)}")
    t = min(max(step, 0), end)
    if decay == "constant" or end <= 0:
        return alpha
    if decay == "linear":
        return alpha * (1.0 - t / end)
    return 0.5 * alpha * (1.0 + math.cos(math.pi * t / end))


def gmp_sparsity(step: int, final: float, begin: int, end: int, initial: float = 0.0) -> float:
    """Gradual magnitude pruning target (Zhu & Gupta 2018): cubic from ``initial`` to ``final``.

    s_t = s_f + (s_i − s_f)·(1 − (t − t0)/(t_end − t0))³ for t0 <= t <= t_end; s_i before,
    s_f after.
    """
    if step <= begin:
        return initial
    if step >= end:
        return final
    progress = (step - begin) / (end - begin)
    return final + (initial - final) * (1.0 - progress) ** 3
