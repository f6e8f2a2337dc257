"""Edge-popup: find a subnetwork of a frozen random network by learning a score per weight.

Ramanujan, Wortsman, Kembhavi, Farhadi & Rastegari, "What's Hidden in a Randomly Weighted Neural
Network?", CVPR 2020 (and the gem code's ``algo: ep``). Each layer uses the weights with the top
k_l |scores|, k_l the layer's count under the chosen distribution; the gradient reaches the
scores straight through the hard top-k (∂L/∂s = ∂L/∂(w ⊙ m) ⊙ w). Scores start Kaiming-uniform
(as the paper's code). See :mod:`.mining` for the phases (mine, then optional weight training).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from ...registry import METHODS
from .mining import ScoreMining, layer_count

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import SparsityEngine
    from ..masks import Target


def topk_abs(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k largest entries of ``scores`` (exactly k; real-valued scores
    practically never tie, so torch.topk's O(N log k) replaces the stable sort of ``topk_mask``)."""
    flat = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        flat[torch.topk(scores.detach().reshape(-1), k, sorted=False).indices] = True
    return flat.view_as(scores)


class _TopKSTE(torch.autograd.Function):
    """Forward: 1 at the k largest inputs (|scores|), 0 elsewhere. Backward: straight through to
    the input, so the chain rule through |·| gives ∂L/∂s = sign(s)·∂L/∂m (the paper's code)."""

    @staticmethod
    def forward(ctx, magnitude: torch.Tensor, k: int) -> torch.Tensor:
        return topk_abs(magnitude, k).to(magnitude.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class TopKMask(nn.Module):
    """Parametrization w ↦ w ⊙ topk(|s|, k) with scores ``s`` learned through the STE."""

    def __init__(self, scores: torch.Tensor, k: int):
        super().__init__()
        self.scores = nn.Parameter(scores)
        self.k = int(k)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * _TopKSTE.apply(self.scores.abs(), self.k)

    def mask(self) -> torch.Tensor:
        return topk_abs(self.scores.detach().abs(), self.k)


@METHODS.register("edge_popup")
class EdgePopup(ScoreMining):
    """Top-k |score| subnetwork of frozen random weights, per layer (Ramanujan et al. 2020)."""

    name = "edge_popup"

    def make_mask(self, engine: "SparsityEngine", target: "Target") -> nn.Module:
        scores = torch.empty(target.shape)
        nn.init.kaiming_uniform_(scores, a=math.sqrt(5), generator=engine.generator)
        return TopKMask(scores, layer_count(engine, target))

    def final_masks(self, engine: "SparsityEngine"):
        return self.current_masks()  # already exactly k_l per layer
