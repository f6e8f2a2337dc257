"""Gradual magnitude pruning (GMP): dense-to-sparse with a cubic sparsity schedule.

Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
compression", ICLR-W 2018; the "Pruning" baseline of Evci et al. (ICML 2020, via Gale et al.
2019). Masks start all-ones; every ``frequency`` steps from ``start`` to ``end`` the smallest
|w| are removed so that exactly the scheduled count remains:

    s_t = s_f + (s_i − s_f)·(1 − (t − t_0)/(t_end − t_0))³.

``scope="layer"``: each layer follows the schedule to its own distribution density (the official
per-layer pruning); ``scope="global"``: one magnitude threshold over all sparsified layers, with
the total count following the schedule to the same overall density.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Optional, Tuple

import torch

from ...errors import ConfigError
from ...registry import METHODS
from ..schedules import gmp_sparsity
from ..topk import count_active, count_zeros
from ..run import RunHooks
from .base import Method
from .pruning import all_ones, check_scope, check_scope_patterns, layer_counts, select

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import SparsityEngine


#: The reference ImageNet schedule of the RigL paper's pruning baseline (its ResNet-50 FLOPs colab,
#: after Gale et al. 2019): prune from step 10k to 25k of 32k, every 1k steps; as fractions of
#: training so that it scales with the run length and train.multiplier.
REFERENCE_STEPS = 32000
REFERENCE_START, REFERENCE_END, REFERENCE_EVERY = 10000, 25000, 1000


@dataclass(frozen=True)
class GMPOptions:
    """``start``/``end``: first and last pruning step (default ``start_fraction``/``end_fraction``
    of training; steps scale with train.multiplier); ``frequency``: Δt between pruning steps
    (default ``frequency_fraction`` of training, at least 1 step); ``initial_sparsity``: s_i;
    ``scope``: ``layer`` or ``global``. Defaults: the reference schedule 10k→25k every 1k of 32k
    steps (:data:`REFERENCE_STEPS`)."""

    start: Optional[int] = None
    end: Optional[int] = None
    start_fraction: float = REFERENCE_START / REFERENCE_STEPS
    end_fraction: float = REFERENCE_END / REFERENCE_STEPS
    frequency: Optional[int] = None
    frequency_fraction: float = REFERENCE_EVERY / REFERENCE_STEPS
    initial_sparsity: float = 0.0
    scope: str = "layer"


def _resolve(step: Optional[int], fraction: float, total: int, what: str) -> int:
    if step is not None:
        return int(step)
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"{what}_fraction must be in [0, 1], got {fraction}")
    return min(int(round(fraction * total)), total - 1)  # the last step index is total − 1


@METHODS.register("gmp")
class GMP(RunHooks, Method):
    """Gradual magnitude pruning to the target sparsity (Zhu & Gupta 2018)."""

    name = "gmp"
    runs_on_compressed = True
    Options = GMPOptions
    starts_dense = True

    def validate(self) -> None:
        o = self.options
        check_scope(o.scope)
        if o.frequency is not None and int(o.frequency) < 1:
            raise ConfigError(f"frequency (steps between pruning steps) must be >= 1, got {o.frequency}")
        if not 0.0 < o.frequency_fraction <= 1.0:
            raise ConfigError(f"frequency_fraction must be in (0, 1], got {o.frequency_fraction}")
        if not 0.0 <= o.initial_sparsity < 1.0:
            raise ConfigError(f"initial_sparsity must be in [0, 1), got {o.initial_sparsity}")

    def setup(self, engine: "SparsityEngine") -> None:
        total = engine.total_steps
        if total is None or int(total) <= 0:
            raise ConfigError("gmp needs total_steps (the training length) to place its schedule")
        self.place(int(total))
        n = sum(t.param.numel() for t in engine.targets)
        self.final = 1.0 - sum(layer_counts(engine).values()) / n  # network-wide s_f
        self.history: list = []

    def place(self, total: int) -> None:
        """Resolve start, end and frequency in steps for a run of ``total`` steps."""
        o = self.options
        self.begin = _resolve(o.start, o.start_fraction, total, "start")
        self.end = _resolve(o.end, o.end_fraction, total, "end")
        self.every = int(o.frequency) if o.frequency is not None else max(1, int(round(o.frequency_fraction * total)))
        if not 0 <= self.begin <= self.end < total:
            raise ConfigError(f"gmp needs 0 <= start ({self.begin}) <= end ({self.end}) < total steps ({total}); "
                              "adjust start/end or their fractions")
        self.total = total

    def init_masks(self, engine: "SparsityEngine") -> Dict[str, torch.Tensor]:
        return all_ones(engine)

    # --- schedule ---------------------------------------------------------------------------
    def is_update_step(self, step: int) -> bool:
        in_range = self.begin <= step <= self.end
        return in_range and ((step - self.begin) % self.every == 0 or step == self.end)

    def target_sparsity(self, step: int, final: float) -> float:
        """Scheduled sparsity at ``step`` of a tensor (or network) whose final sparsity is ``final``."""
        return gmp_sparsity(step, final, self.begin, self.end, min(self.options.initial_sparsity, final))

    def progress(self, step: int) -> float:
        """Fraction of the way from s_i to s_f at ``step``: 1 − (1 − (t − t_0)/(t_end − t_0))³."""
        return gmp_sparsity(step, 1.0, self.begin, self.end, 0.0)

    def previous_update(self, step: int) -> Optional[int]:
        """The last pruning step before ``step`` (None before the first)."""
        last, f = step - 1, self.every
        if last < self.begin:
            return None
        return self.end if last >= self.end else self.begin + (last - self.begin) // f * f

    def drop_fraction(self, step: int) -> float:
        """Fraction of the active weights removed at ``step`` (0 off the pruning steps)."""
        if not self.is_update_step(step):
            return 0.0
        prev = self.previous_update(step)
        before = 0.0 if prev is None else self.target_sparsity(prev, self.final)
        return 1.0 - (1.0 - self.target_sparsity(step, self.final)) / (1.0 - before)

    # --- pruning ----------------------------------------------------------------------------
    def keep_counts(self, engine: "SparsityEngine", step: int) -> Dict[str, int]:
        """Per-layer active counts at ``step`` (scope ``layer``), in whole units of each layer's
        pattern: N:M prunes gradually *within every group* (the kept-per-group count follows the
        schedule from M down to N), block/channel whole blocks/channels (:mod:`..patterns`)."""
        out = {}
        for t in engine.targets:
            pattern, final = engine.pattern(t.name), 1.0 - engine.densities[t.name]
            if pattern.structured:
                out[t.name] = pattern.count(t.shape, 1.0 - self.target_sparsity(step, final))
            else:
                out[t.name] = t.param.numel() - count_zeros(t.param.numel(), self.target_sparsity(step, final))
        return out

    def check_patterns(self, patterns) -> None:
        check_scope_patterns(self.options.scope, patterns, self.name)

    def keep_total(self, engine: "SparsityEngine", step: int) -> int:
        """Network-wide active count at ``step`` (scope ``global``); ends at the distribution's total."""
        n = sum(t.param.numel() for t in engine.targets)
        return count_active(n, 1.0 - self.target_sparsity(step, self.final))

    def allocate(self, engine: "SparsityEngine", fraction: float) -> Dict[str, Tuple[int, int]]:
        step, masks = engine.step, engine.masks
        active = {t.name: int(masks[t.name].sum()) for t in engine.targets}
        if self.options.scope == "layer":
            keep = {n: min(active[n], k) for n, k in self.keep_counts(engine, step).items()}
        else:
            # over the active entries only (row-major, the order of the dense tie rule), so a
            # compressed layer (sparsity.storage) is ranked without a dense copy
            scores = {n: engine.active_values(n).abs() for n in active}
            total = min(sum(active.values()), self.keep_total(engine, step))
            kept = select(scores, active, "global", total=total)
            keep = {n: int(m.sum()) for n, m in kept.items()}
        return {n: (active[n] - keep[n], 0) for n in active}

    def finish_update(self, engine: "SparsityEngine") -> None:
        active = sum(int(m.sum()) for m in engine.masks.values())
        total = sum(m.numel() for m in engine.masks.values())
        self.history.append({"step": engine.step, "target_sparsity": self.target_sparsity(engine.step, self.final),
                             "density": active / total})

    # --- reporting --------------------------------------------------------------------------
    def eval_metrics(self, engine: "SparsityEngine") -> dict:
        return {"target_sparsity": self.target_sparsity(engine.step, self.final)}

    def ticket_step(self, engine: Optional["SparsityEngine"]) -> Optional[int]:
        return self.end + 1

    def training_flops(self, f_s: float, f_d: float) -> float:
        # per-layer scope: every layer's density moves by the same cubic factor c_t, so the sparse
        # forward FLOPs are f_D − c_t·(f_D − f_S); averaged over the steps (the mask of step t is
        # the one set by the last pruning step before t). Global scope: the same approximation.
        # Without a run (the flops command) the schedule is placed on the reference run length.
        if getattr(self, "total", None) is None:
            self.place(self._flops_steps())
        progress = [0.0 if (u := self.previous_update(t)) is None else self.progress(u) for t in range(self.total)]
        c_mean = sum(progress) / self.total
        return 3.0 * (f_d - c_mean * (f_d - f_s))

    def _flops_steps(self) -> int:
        """Run length to place the schedule on when no run gives one: the reference 32k steps;
        step-valued options need a run length the FLOPs estimate does not know."""
        o = self.options
        if o.start is not None or o.end is not None or o.frequency is not None:
            raise ConfigError("gmp's training FLOPs without a run need the schedule as fractions of training; "
                              "set sparsity.options.start_fraction/end_fraction/frequency_fraction instead of "
                              "start/end/frequency")
        return REFERENCE_STEPS

    def report(self) -> dict:
        return {"gmp": {"start": self.begin, "end": self.end, "frequency": self.every,
                        "scope": self.options.scope, "schedule": list(self.history)}}

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history", []))
