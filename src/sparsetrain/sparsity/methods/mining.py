"""Mining a mask over frozen random weights, then (optionally) training the weights under it.

Shared by edge-popup (Ramanujan et al., "What's Hidden in a Randomly Weighted Neural Network?",
CVPR 2020) and Gem-Miner (Sreenivasan et al., "Rare Gems: Finding Lottery Tickets at
Initialization", NeurIPS 2022). Phase ``mine``: every parameter of the model is frozen at its
initial value and each sparsified weight gets a score tensor; the weight is reparametrized with
``torch.nn.utils.parametrize`` as w ⊙ m(scores), where m is a hard mask with a straight-through
gradient, and only the scores are optimised. At the end the exact-count mask is installed in the
engine, the parametrization is removed (the weights are the untouched init values) and the
ticket's accuracy before any weight training is recorded. Phase ``finetune``: the init weights
are trained under the fixed mask (a fresh optimizer and LR schedule). The ticket written for
the sanity checks holds the unmasked init weights too.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

from ...errors import ConfigError
from ..patterns import refuse_structured
from ..run import Callback, Phase, RunContext, RunHooks, cpu_copy, save_ticket
from ..topk import count_active
from .base import Method
from .pruning import all_ones, layer_counts, sparsities

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import SparsityEngine
    from ..masks import Target

log = logging.getLogger(__name__)

Masks = Dict[str, torch.Tensor]


@dataclass(frozen=True)
class MiningOptions:
    """``finetune``: length of the weight-training phase as a multiple of the configured training
    length (0: no weight training); ``finetune_lr`` / ``mine_lr`` / ``mine_weight_decay``: optim
    overrides of the two phases (None: the run's optim config); ``weight_init``: ``keep`` (the
    model's init) or ``signed_constant`` (±gain/√fan_in, edge-popup's best)."""

    finetune: float = 1.0
    finetune_lr: Optional[float] = None
    mine_lr: Optional[float] = None
    mine_weight_decay: Optional[float] = None
    weight_init: str = "keep"


@torch.no_grad()
def signed_constant_(weight: torch.Tensor) -> None:
    """w ← sign(w)·√2/√fan_in (Ramanujan et al. 2020, 'signed Kaiming constant')."""
    fan_in = weight[0].numel() if weight.dim() > 1 else weight.numel()
    weight.copy_(weight.sign() * math.sqrt(2.0 / fan_in))


def owner(model: nn.Module, target) -> tuple:
    """(module, attribute name) holding a target's weight."""
    return model.get_submodule(target.module_name), target.name.rsplit(".", 1)[-1]


class ScoreMining(RunHooks, Method):
    """Base of the score-mining methods. Subclasses create the per-layer parametrization
    (:meth:`make_mask`) and pick the final exact-count mask (:meth:`final_masks`)."""

    Options = MiningOptions
    starts_dense = True
    #: optim overrides of the mining phase before the user's (Gem-Miner: no weight decay)
    mine_optim_defaults: dict = {}

    def check_patterns(self, patterns) -> None:
        refuse_structured(patterns, self.name, "mine an unstructured mask (a score per weight)")

    def validate(self) -> None:
        o = self.options
        if not o.finetune >= 0:
            raise ConfigError(f"finetune (a multiple of the training length) must be >= 0, got {o.finetune}")
        if o.weight_init not in ("keep", "signed_constant"):
            raise ConfigError(f"weight_init must be 'keep' or 'signed_constant', got '{o.weight_init}'")

    def setup(self, engine: "SparsityEngine") -> None:
        self.mods: Dict[str, nn.Module] = {}
        self.ticket: Optional[dict] = None
        self.ticket_at: Optional[int] = None
        self._grad_flags: Dict[int, bool] = {}

    def init_masks(self, engine: "SparsityEngine") -> Masks:
        return all_ones(engine)  # the engine stays inert while mining; the parametrization masks

    # --- subclass hooks ---------------------------------------------------------------------
    def make_mask(self, engine: "SparsityEngine", target: "Target") -> nn.Module:
        """The parametrization module of one weight (holds its scores)."""
        raise NotImplementedError

    def final_masks(self, engine: "SparsityEngine") -> Masks:
        """The exact-count mask at the end of mining."""
        raise NotImplementedError

    def current_masks(self) -> Masks:
        return {n: m.mask() for n, m in self.mods.items()}

    def scores(self) -> Masks:
        return {n: m.scores.detach().clone() for n, m in self.mods.items()}

    def mining_callbacks(self, run: RunContext) -> List[Callback]:
        return []

    def regulariser(self):
        return None

    # --- phases -----------------------------------------------------------------------------
    def phases(self, run: RunContext) -> List[Phase]:
        o = self.options
        mine_optim = dict(self.mine_optim_defaults)
        mine_optim.update({k: v for k, v in (("lr", o.mine_lr), ("weight_decay", o.mine_weight_decay)) if v is not None})
        self.ticket_at = run.total_steps
        out = [Phase("mine", run.total_steps, optim=mine_optim, setup=self.attach, begin=self._init_weights,
                     end=self.finish, callbacks=self.mining_callbacks(run), extra_loss=self.regulariser())]
        if o.finetune > 0:
            steps = max(1, int(round(o.finetune * run.total_steps)))
            out.append(Phase("finetune", steps, optim={"lr": o.finetune_lr} if o.finetune_lr else {}))
        return out

    def attach(self, run: RunContext) -> None:
        """Freeze every parameter and reparametrize each sparsified weight as w ⊙ m(scores)."""
        engine = run.engine
        for p in run.model.parameters():
            self._grad_flags.setdefault(id(p), p.requires_grad)
            p.requires_grad_(False)
        for t in engine.targets:
            module, attr = owner(run.model, t)
            mod = self.make_mask(engine, t).to(t.param.device)
            parametrize.register_parametrization(module, attr, mod)
            self.mods[t.name] = mod

    def detach(self, run: RunContext) -> None:
        """Remove the parametrizations (the weights are their init values again) and unfreeze."""
        for t in run.engine.targets:
            module, attr = owner(run.model, t)
            if parametrize.is_parametrized(module, attr):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
        for p in run.model.parameters():
            p.requires_grad_(self._grad_flags.get(id(p), True))
        self.mods = {}

    def _init_weights(self, run: RunContext) -> None:
        if self.options.weight_init == "signed_constant":
            for t in run.engine.targets:
                signed_constant_(t.param)

    def finish(self, run: RunContext) -> None:
        """End of mining: exact mask into the engine, init weights back, ticket evaluated."""
        engine = run.engine
        masks, scores = self.final_masks(engine), self.scores()
        rounded = self.current_masks()
        n = sum(m.numel() for m in masks.values())
        self.detach(run)
        init = cpu_copy(run.model.state_dict())  # the init weights, before the mask zeroes any
        engine.set_masks(masks, reason=f"{self.name} ticket")
        self.ticket = {"density": sum(int(m.sum()) for m in masks.values()) / n,
                       "rounded_density": sum(int(m.sum()) for m in rounded.values()) / n,
                       "target_density": target_count(engine) / n,
                       "layer_sparsity": sparsities(masks), "step": engine.step}
        for split, m in run.evaluate().items():
            self.ticket.update({f"{split}_{k}": v for k, v in m.items()})
        log.info("%s: ticket at density %.4f, accuracy before weight training %s", self.name,
                 self.ticket["density"], {k: round(v, 4) for k, v in self.ticket.items() if k.endswith("accuracy")})
        save_ticket(run, scores, init)

    # --- reporting --------------------------------------------------------------------------
    def eval_metrics(self, engine: "SparsityEngine") -> dict:
        if not self.mods:
            return {}
        masks = self.current_masks()
        n = sum(m.numel() for m in masks.values())
        return {"density": sum(int(m.sum()) for m in masks.values()) / n,
                "layer_density": {k: 1.0 - v for k, v in sparsities(masks).items()}}

    def ticket_step(self, engine: Optional["SparsityEngine"]) -> Optional[int]:
        return self.ticket_at

    def report(self) -> dict:
        return {self.name: {"ticket": self.ticket, **self.extra_report()}}

    def extra_report(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {"ticket": self.ticket}

    def load_state_dict(self, state: dict) -> None:
        self.ticket = state.get("ticket")


def target_count(engine: "SparsityEngine") -> int:
    """Total active weights the distribution asks for (Σ_l N_l − floor(s_l·N_l))."""
    return sum(layer_counts(engine).values())


def layer_count(engine: "SparsityEngine", target: "Target") -> int:
    return count_active(target.param.numel(), engine.densities[target.name])
