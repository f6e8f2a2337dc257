"""GraSP: pruning at initialisation that preserves gradient flow.

Wang, Zhang & Grosse, "Picking Winning Tickets Before Training by Preserving Gradient Flow",
ICLR 2020. Score S(w) = −w ⊙ (H g), with g the loss gradient and H g a Hessian-gradient product
on a batch (logits divided by a temperature, 200 in the paper's code); the weights with the
HIGHEST scores are removed, i.e. the lowest kept. Global by default, as in the paper;
``scope="layer"`` keeps each layer's distribution count instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, Optional, Sequence

import torch

from ...errors import ConfigError
from ...registry import METHODS
from .pruning import PruneAtInit

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import SparsityEngine


def _tempered(loss_fn: Callable, temperature: float) -> Callable:
    def loss(out, y):
        if isinstance(out, (tuple, list)):
            out = out[0]
        return loss_fn(out / temperature, y)
    return loss


def grasp_scores(model: torch.nn.Module, params: Dict[str, torch.Tensor], batch, loss_fn: Callable,
                 temperature: float = 200.0) -> Dict[str, torch.Tensor]:
    """Keep-scores w ⊙ (H g) = −(GraSP score) for ``params`` ({name: parameter}) on one batch:
    higher = keep. H g = ∂(g_detached · ∂L/∂w)/∂w by double backward."""
    x, y = batch
    tensors = list(params.values())
    loss = _tempered(loss_fn, temperature)
    g = torch.autograd.grad(loss(model(x), y), tensors, allow_unused=True)
    g = [torch.zeros_like(p) if gi is None else gi.detach() for p, gi in zip(tensors, g)]
    g2 = torch.autograd.grad(loss(model(x), y), tensors, create_graph=True, allow_unused=True)
    z = sum((gi * g2i).sum() for gi, g2i in zip(g, g2) if g2i is not None)
    hg = torch.autograd.grad(z, tensors, allow_unused=True)
    return {n: (torch.zeros_like(p) if h is None else p.detach() * h.detach())
            for (n, p), h in zip(params.items(), hg)}


@dataclass(frozen=True)
class GraSPOptions:
    """``scope``: ``global`` (paper) or ``layer``; ``temperature`` divides the logits."""

    scope: str = "global"
    temperature: float = 200.0


@METHODS.register("grasp")
class GraSP(PruneAtInit):
    """Gradient-signal preservation at init (Wang et al., ICLR 2020): keep the lowest −w ⊙ Hg."""

    name = "grasp"
    Options = GraSPOptions

    def validate(self) -> None:
        super().validate()
        if not self.options.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.options.temperature}")

    def scores(self, engine: "SparsityEngine", batch, loss_fn: Callable, input_shape: Optional[Sequence[int]],
               input_dtype: Optional[torch.dtype]) -> Dict[str, torch.Tensor]:
        return grasp_scores(engine.model, {t.name: t.param for t in engine.targets}, batch, loss_fn,
                            self.options.temperature)
