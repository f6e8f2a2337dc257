"""Small-Dense: a narrower dense model with as many parameters as the sparse one has nonzeros.

The "Small-Dense" baseline of Evci et al., "Rigging the Lottery: Making All Tickets Winners",
ICML 2020 (§4): same architecture, every hidden width scaled by one factor chosen so the total
parameter count matches the sparse model's nonzero count at the configured sparsity and layer
distribution (biases and norms included on both sides).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import torch

from ...registry import METHODS
from ..distributions import plan_densities
from ..run import RunHooks
from .base import Method

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import SparsityEngine

log = logging.getLogger(__name__)


def sparse_nonzeros(cfg, info) -> int:
    """Nonzero parameters of ``cfg``'s model (at ``cfg.model.width``) under its sparsity config:
    every parameter minus the zeros of the sparsified layers. Built on the meta device."""
    from ...models import build_model, count_parameters

    s, m = cfg.sparsity, cfg.model
    with torch.device("meta"):
        model = build_model(m.name, info, width=m.width, **m.options)
    plan = plan_densities(model, s.sparsity, s.distribution, dense_first=s.dense_first, dense_last=s.dense_last,
                          include=s.include, exclude=s.exclude, custom=s.custom, erk_power=s.erk_power)
    zeros = plan.zeros()
    return count_parameters(model) - zeros


@METHODS.register("small_dense")
class SmallDense(RunHooks, Method):
    """Dense training of the width-scaled model (Evci et al. 2020, Small-Dense). No masks: the
    Trainer builds the model at the width found by :meth:`adjust_config`."""

    name = "small_dense"
    uses_masks = False

    @classmethod
    def adjust_config(cls, cfg, info):
        from ...models import small_dense_width

        m = cfg.model
        target = sparse_nonzeros(cfg, info)
        width = small_dense_width(m.name, info, target, **m.options)
        log.info("small_dense: width %.4f for %d parameters (the sparse model's nonzeros)", width, target)
        return dataclasses.replace(cfg, model=dataclasses.replace(m, width=width))

    def init_masks(self, engine: "SparsityEngine"):
        return {t.name: torch.ones_like(t.param, dtype=torch.bool) for t in engine.targets}
