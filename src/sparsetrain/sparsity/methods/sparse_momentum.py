"""Sparse momentum as Dettmers & Zettlemoyer published it (the ``snfs`` code), not the RigL paper's row.

Dettmers & Zettlemoyer, "Sparse Networks from Scratch: Faster Training without Losing
Performance", 2019. What differs from :mod:`.snfs` (the RigL paper's SNFS):

* a dense momentum: gradients of inactive weights keep accumulating into the momentum
  m ← β·m + g, and a regrown weight inherits its accumulated momentum (its SGD momentum buffer
  is set to m instead of 0); its value still starts at 0;
* the mask changes at the end of every epoch but the last (ΔT = one epoch), with a prune rate
  cosine-decayed per step over all of training from ``prune_rate`` to ``prune_rate_min``
  (0.5 → 0.005);
* redistribution: layer l regrows ∝ π_l, the mean |m| over its active weights, capped at 0.99 of
  its free slots; it prunes ceil(p·n_l) of its n_l active weights, except that a layer with
  sparsity below 0.2 whose π_l exceeds the uniform share 1/L prunes only min(sparsity_l, p).

Deviation, stated: the original corrects rounding drift of its ceil-rounded regrowth with an
"adjusted growth" term; here the regrown counts are apportioned with largest remainders so the
global count is exact at every update. Only SGD's ``momentum_buffer`` is inherited (the paper's
optimizer); with Adam regrown weights start from zero state.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Dict, Tuple

import torch

from ...errors import ConfigError
from ...registry import METHODS
from ..schedules import UpdateSchedule
from .base import DynamicOptions
from .redistribution import apportion
from .snfs import SNFS

log = logging.getLogger(__name__)

#: a layer sparser than this is "low-sparsity": it prunes at most its own sparsity (original code)
LOW_SPARSITY = 0.2
#: regrowth fills at most this fraction of a layer's free slots (original code)
GROWTH_CAP = 0.99


@dataclass(frozen=True)
class SparseMomentumOptions(DynamicOptions):
    """``prune_rate`` → ``prune_rate_min``: the cosine-decayed prune rate; ``delta_t``: steps
    between updates when no run gives the epoch length (a run uses one epoch); ``momentum``: β,
    keep it equal to ``optim.momentum``. ``alpha``, ``decay``, ``end`` and ``redistribution``
    are not used (the schedule is the paper's)."""

    prune_rate: float = 0.5
    prune_rate_min: float = 0.005
    redistribution: str = "momentum"


@METHODS.register("sparse_momentum")
class SparseMomentum(SNFS):
    """Sparse momentum with a dense momentum buffer, per-epoch updates and redistribution
    (Dettmers & Zettlemoyer 2019, as in their reference code)."""

    name = "sparse_momentum"
    Options = SparseMomentumOptions
    #: the original's dense momentum, m ← β·m + g over every weight (SGD's buffer rule, no
    #: dampening) instead of SNFS's EMA: same ranking, and directly the value a regrown weight's
    #: momentum buffer inherits
    dampened_momentum = False
    #: its dense momentum buffer (regrown weights inherit it) has no nnz-sized form: masked-dense only
    runs_on_compressed = False

    def validate(self) -> None:
        super().validate()
        o = self.options
        if not 0.0 <= o.prune_rate_min <= o.prune_rate <= 1.0:
            raise ConfigError(f"need 0 <= prune_rate_min <= prune_rate <= 1, got {o.prune_rate_min}, {o.prune_rate}")
        if o.redistribution != "momentum":
            raise ConfigError("sparse_momentum always redistributes by momentum; use snfs for other choices")

    def setup(self, engine) -> None:
        super().setup(engine)
        self.total = int(engine.total_steps)
        self.epoch_steps(int(self.options.delta_t))
        self._before: Dict[str, torch.Tensor] = {}

    def epoch_steps(self, steps: int) -> None:
        """Update at the end of every epoch of ``steps`` steps but the last."""
        steps = max(1, min(int(steps), self.total))
        self.schedule = UpdateSchedule(steps, steps - 1, max(0, self.total - steps))

    def phases(self, run):
        self.epoch_steps(run.steps_per_epoch)
        return None

    def drop_fraction(self, step: int) -> float:
        # cosine annealing of the prune rate over all training steps, floored at prune_rate_min
        o = self.options
        t = min(max(step, 0), self.total)
        return o.prune_rate_min + 0.5 * (o.prune_rate - o.prune_rate_min) * (1.0 + math.cos(math.pi * t / self.total))

    def allocate(self, engine, fraction: float) -> Dict[str, Tuple[int, int]]:
        self._before = dict(engine.masks)  # masks are replaced, never edited: a reference suffices
        stats = {t.name: self._layer_statistic(engine, t.name) for t in engine.targets}
        total_stat = sum(stats.values())
        share = {n: (s / total_stat if total_stat > 0 else 0.0) for n, s in stats.items()}
        removed, capacity = {}, {}
        for t in engine.targets:
            n, active = t.param.numel(), int(engine.masks[t.name].sum())
            rate = self.layer_rate(1.0 - active / n, share[t.name], len(stats), fraction)
            removed[t.name] = min(active, math.ceil(round(rate * active, 9)))
            capacity[t.name] = int(GROWTH_CAP * (n - active + removed[t.name]))
        grown = apportion(stats, sum(removed.values()), capacity, fallback=removed)
        return {n: (removed[n], grown[n]) for n in removed}

    @staticmethod
    def layer_rate(sparsity: float, share: float, n_layers: int, rate: float) -> float:
        """Prune rate of one layer: ``rate``, or min(sparsity, rate) for a low-sparsity layer
        with more than its uniform share of the momentum."""
        if sparsity < LOW_SPARSITY and share > 1.0 / n_layers:
            return min(sparsity, rate)
        return rate

    @torch.no_grad()
    def finish_update(self, engine) -> None:
        """Regrown weights inherit the momentum accumulated while they were inactive."""
        super().finish_update(engine)
        for t in engine.targets:
            before, m = self._before.get(t.name), self.ema.get(t.name)
            if before is None or m is None or engine.is_compressed(t.name) or engine.optimizer is None:
                continue
            buf = engine.optimizer.state.get(t.param, {}).get("momentum_buffer")
            if buf is None:
                continue
            fresh = engine.masks[t.name] & ~before
            buf[fresh] = m[fresh]
        self._before = {}

