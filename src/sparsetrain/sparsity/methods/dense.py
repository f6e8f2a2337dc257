"""Dense baseline: no masks at all."""
from typing import TYPE_CHECKING

import torch

from ...flops import training_flops_dense
from ...registry import METHODS
from .base import Method

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import SparsityEngine


@METHODS.register("dense")
class Dense(Method):
    """The dense model trained with the same recipe (the reference point of every table in
    Evci et al., ICML 2020). The trainer attaches no engine; used inside an engine it keeps
    every weight active."""

    name = "dense"
    uses_masks = False

    def init_masks(self, engine: "SparsityEngine"):
        return {t.name: torch.ones_like(t.param, dtype=torch.bool) for t in engine.targets}

    def training_flops(self, f_s: float, f_d: float) -> float:
        return training_flops_dense(f_d)

    def uses_dense_grad(self, step: int) -> bool:
        return True
