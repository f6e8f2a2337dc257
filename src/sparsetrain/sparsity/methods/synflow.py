"""SynFlow: data-free iterative pruning at initialisation by synaptic flow.

Tanaka, Kunin, Yamins & Ganguli, "Pruning neural networks without any data by iteratively
conserving synaptic flow", NeurIPS 2020. Every parameter and buffer is replaced by its absolute
value (a float64 copy of the model, in eval mode), an all-ones input is fed, R = sum of the
outputs and the score is |w ⊙ ∂R/∂w|. Pruning is iterative: after round k of n (100 by default)
the kept fraction is d^(k/n) (exponential schedule), global by default, ending exactly at the
target count. No data is read.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, Mapping, Optional, Sequence

import torch

from ...errors import ConfigError
from ...registry import METHODS
from ..topk import count_active
from .pruning import PruneAtInit, layer_counts, select

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import SparsityEngine


@torch.no_grad()
def linearize(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of ``model`` in eval mode with every parameter and buffer made non-negative."""
    net = copy.deepcopy(model).double().eval()
    for t in net.state_dict().values():
        if t.is_floating_point():
            t.abs_()
    for p in net.parameters():
        p.requires_grad_(True)
    return net


def synflow_scores(model: torch.nn.Module, names: Sequence[str], input_shape: Sequence[int],
                   masks: Optional[Mapping[str, torch.Tensor]] = None,
                   input_dtype: Optional[torch.dtype] = None, net: Optional[torch.nn.Module] = None
                   ) -> Dict[str, torch.Tensor]:
    """|w ⊙ ∂R/∂w| for the parameters ``names`` of ``model`` with the weights outside ``masks``
    removed. ``net`` reuses a :func:`linearize` copy (its masked weights are zeroed in place)."""
    net = linearize(model) if net is None else net
    params = dict(net.named_parameters())
    if masks is not None:
        with torch.no_grad():
            for n, m in masks.items():
                params[n].mul_(m.to(params[n].device))
    device = next(net.parameters()).device
    x = torch.ones((1, *input_shape), dtype=input_dtype or torch.float64, device=device)
    out = net(x)
    out = out[0] if isinstance(out, (tuple, list)) else out
    grads = torch.autograd.grad(out.sum(), [params[n] for n in names])
    return {n: (g * params[n]).detach().abs().float() for n, g in zip(names, grads)}


@dataclass(frozen=True)
class SynFlowOptions:
    """``rounds`` of the exponential schedule (100 in the paper); ``scope`` global (paper) or layer."""

    scope: str = "global"
    rounds: int = 100


@METHODS.register("synflow")
class SynFlow(PruneAtInit):
    """Iterative synaptic-flow pruning without data (Tanaka et al., NeurIPS 2020).

    Needs the input shape instead of a batch: ``prune_at_init(engine, input_shape=(1, 28, 28))``;
    the Trainer passes the dataset's.
    """

    name = "synflow"
    Options = SynFlowOptions
    needs_data = False

    def validate(self) -> None:
        super().validate()
        if int(self.options.rounds) < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.options.rounds}")

    def scores(self, engine: "SparsityEngine", batch, loss_fn: Callable, input_shape: Optional[Sequence[int]],
               input_dtype: Optional[torch.dtype]) -> Dict[str, torch.Tensor]:
        if input_shape is None:
            raise ConfigError("synflow needs the model's input shape: pass input_shape=(C, H, W) or (features,)")
        names = [t.name for t in engine.targets]
        net, masks = linearize(engine.model), None
        n_total = sum(t.param.numel() for t in engine.targets)
        final = sum(layer_counts(engine).values()) / n_total
        rounds = int(self.options.rounds)
        for k in range(1, rounds + 1):
            scores = synflow_scores(engine.model, names, input_shape, masks, input_dtype, net=net)
            total = count_active(n_total, final ** (k / rounds))
            masks = select(scores, layer_counts(engine, k / rounds), self.options.scope, masks, total,
                           patterns=engine.patterns)
        self._masks = masks
        return scores

    def select(self, engine: "SparsityEngine", scores):
        # the last round already selected exactly the target counts
        return self._masks
