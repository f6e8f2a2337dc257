"""Gem-Miner: lottery tickets at initialisation by mining [0, 1] scores over frozen weights.

Sreenivasan, Sohn, Yang, Grinde, Nagle, Wang, Xing, Lee & Papailiopoulos, "Rare Gems: Finding
Lottery Tickets at Initialization", NeurIPS 2022 (Algorithm 1 and the ``gem`` code). While
mining, the weights stay at their init; every weight has a score p ∈ [0, 1] (init U[0, 1]) and a
frozen flag q ∈ {0, 1}; the layer computes w ⊙ q ⊙ r(p) with r(p) = 1[p ≥ 0.5] and a
straight-through gradient to p; p is clamped to [0, 1] after every step and the loss has
λ·Σ p² added. Every T epochs (after epoch indices T, 2T, ... ≤ E − 1, so n = floor((E − 1)/T)
times) the lowest-scoring still-flagged weights network-wide are frozen out at the rate
ρ = 1 − d^(1/n), d the target density; the last freeze lands exactly on the target count.

The ticket (``final_mask``): ``"rounded"`` (default) is Algorithm 1's output and the default of
the gem code, q ⊙ r(p): the flagged weights whose score rounds to 1. Its density can fall below
the target when the regulariser pushed flagged scores under 0.5; the rounded density is reported
and a warning is logged when it misses the target by more than 5 % (relative). If rounding left no
weight at all, the top-K flagged scores are used instead, as the gem code prunes to the target
when the whole network was pruned. ``"top_k"`` (the behaviour before issue #12): exactly the
target count K, the top-K scores among flagged weights, whatever their rounding. The accuracy
before weight training is measured on the installed ticket. Then the init weights are trained
under it (:mod:`.mining`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import List

import torch
from torch import nn

from ...errors import ConfigError
from ...registry import METHODS
from ..run import Callback, RunContext
from .mining import MiningOptions, ScoreMining, target_count
from .pruning import select

log = logging.getLogger(__name__)


class _RoundSTE(torch.autograd.Function):
    """Forward: 1[p ≥ 0.5]. Backward: the gradient passes to p unchanged."""

    @staticmethod
    def forward(ctx, p: torch.Tensor) -> torch.Tensor:
        return (p >= 0.5).to(p.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


class GemMask(nn.Module):
    """Parametrization w ↦ w ⊙ q ⊙ r(p): scores ``p`` (learned) and frozen flags ``q`` (a buffer)."""

    def __init__(self, scores: torch.Tensor):
        super().__init__()
        self.scores = nn.Parameter(scores)
        self.register_buffer("flag", torch.ones_like(scores, dtype=torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.flag * _RoundSTE.apply(self.scores)

    def mask(self) -> torch.Tensor:
        return self.flag & (self.scores.detach() >= 0.5)


def freeze_schedule(epochs: int, period: int, steps_per_epoch: int) -> List[int]:
    """Steps (from the start of mining) after which a freeze happens: the ends of epoch indices
    T, 2T, ... ≤ E − 1 (the gem code freezes after epoch e when e mod T = 0 and e ≠ 0)."""
    n = max(0, (int(epochs) - 1) // int(period))
    return [(j * int(period) + 1) * int(steps_per_epoch) for j in range(1, n + 1)]


def freeze_rate(density: float, n_freezes: int) -> float:
    """ρ = 1 − d^(1/n): the fraction of flagged weights each of the n freezes removes."""
    return 0.0 if n_freezes == 0 else 1.0 - density ** (1.0 / n_freezes)


@dataclass(frozen=True)
class GemMinerOptions(MiningOptions):
    """``reg_lambda``: λ of the λ·Σ p² regulariser; ``freeze_period``: T, epochs between freezes;
    ``final_mask``: ``rounded`` (q ⊙ r(p), the paper's) or ``top_k`` (exactly the target count)."""

    reg_lambda: float = 1e-4
    freeze_period: int = 5
    final_mask: str = "rounded"


FINAL_MASKS = ("rounded", "top_k")
#: relative shortfall of the rounded ticket's count below the target that is logged as a warning
MISS_TOLERANCE = 0.05


@METHODS.register("gem_miner")
class GemMiner(ScoreMining):
    """Gem-Miner (Sreenivasan et al., NeurIPS 2022): [0, 1] scores, STE rounding, L2 on scores,
    global iterative freezing to exactly the target density, then weight training."""

    name = "gem_miner"
    Options = GemMinerOptions
    mine_optim_defaults = {"weight_decay": 0.0}

    def validate(self) -> None:
        super().validate()
        if not self.options.reg_lambda >= 0:
            raise ConfigError(f"reg_lambda must be >= 0, got {self.options.reg_lambda}")
        if int(self.options.freeze_period) < 1:
            raise ConfigError(f"freeze_period (epochs) must be >= 1, got {self.options.freeze_period}")
        if self.options.final_mask not in FINAL_MASKS:
            raise ConfigError(f"final_mask must be one of {', '.join(FINAL_MASKS)}, got '{self.options.final_mask}'")

    def setup(self, engine) -> None:
        super().setup(engine)
        self.freezes: List[dict] = []
        self.K = target_count(engine)
        self.generator = engine.generator  # random tie-breaks among clipped scores; checkpointed
        self.N = sum(t.param.numel() for t in engine.targets)

    def make_mask(self, engine, target) -> nn.Module:
        return GemMask(torch.rand(target.shape, generator=engine.generator))

    def regulariser(self):
        lam = float(self.options.reg_lambda)
        if lam == 0:
            return None
        return lambda: lam * sum((m.scores ** 2).sum() for m in self.mods.values())

    def mining_callbacks(self, run: RunContext) -> List[Callback]:
        spe = run.steps_per_epoch
        at = freeze_schedule(run.total_steps // spe, self.options.freeze_period, spe)
        return [_MiningStep(self, at)]

    @torch.no_grad()
    def clamp(self) -> None:
        """Project every score back to [0, 1] (after each optimizer step)."""
        for m in self.mods.values():
            m.scores.clamp_(0.0, 1.0)

    @torch.no_grad()
    def freeze(self, j: int, n: int) -> dict:
        """Freeze j of n: keep the top (1 − ρ)·A flagged scores network-wide (exactly K at j = n)."""
        flags = {k: m.flag for k, m in self.mods.items()}
        active = sum(int(f.sum()) for f in flags.values())
        rho = freeze_rate(self.K / self.N, n)
        keep = self.K if j == n else max(self.K, active - math.ceil(round(rho * active, 9)))
        new = select({k: m.scores for k, m in self.mods.items()}, {k: 0 for k in flags}, "global",
                     eligible=flags, total=min(keep, active), generator=self.generator)
        for k, m in self.mods.items():
            m.flag.copy_(new[k])
        rec = {"freeze": j, "of": n, "flagged_before": active, "flagged": min(keep, active),
               "density": min(keep, active) / self.N}
        self.freezes = [f for f in self.freezes if f["freeze"] != j] + [rec]
        return rec

    def final_masks(self, engine):
        rounded = self.current_masks()
        count = sum(int(m.sum()) for m in rounded.values())
        if self.options.final_mask == "rounded" and count > 0:
            if count < (1.0 - MISS_TOLERANCE) * self.K:
                log.warning("gem_miner: the rounded ticket has density %.4f, below the target %.4f (%d of %d "
                            "weights); lower reg_lambda or set sparsity.options.final_mask=top_k",
                            count / self.N, self.K / self.N, count, self.K)
            return rounded
        if self.options.final_mask == "rounded":
            log.warning("gem_miner: rounding pruned every weight; the ticket is the top-%d flagged scores", self.K)
        return self.top_k_masks()

    def top_k_masks(self):
        """Exactly K weights: the top-K scores among flagged ones (ties broken at random)."""
        flags = {k: m.flag for k, m in self.mods.items()}
        return select({k: m.scores for k, m in self.mods.items()}, {k: 0 for k in flags}, "global",
                      eligible=flags, total=min(self.K, sum(int(f.sum()) for f in flags.values())),
                      generator=self.generator)

    def eval_metrics(self, engine) -> dict:
        out = super().eval_metrics(engine)
        if self.mods:
            out["flag_density"] = sum(int(m.flag.sum()) for m in self.mods.values()) / self.N
        return out

    def extra_report(self) -> dict:
        return {"freezes": list(self.freezes), "target_count": self.K}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "freezes": list(self.freezes)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.freezes = list(state.get("freezes", []))


class _MiningStep(Callback):
    """After every mining step: clamp scores to [0, 1]; at the scheduled steps, freeze."""

    def __init__(self, method: GemMiner, freeze_at: List[int]):
        self.method, self.freeze_at = method, list(freeze_at)

    def on_step_end(self, s) -> None:
        self.method.clamp()
        if s.step in self.freeze_at:  # mining is the first phase: its steps start at 0
            self.method.freeze(self.freeze_at.index(s.step) + 1, len(self.freeze_at))
