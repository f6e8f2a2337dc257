"""Small-Dense: a narrower dense model as large as the sparse one.

The "Small-Dense" baseline of Evci et al., "Rigging the Lottery: Making All Tickets Winners",
ICML 2020 (§4): same architecture, every hidden width (stem, bottleneck planes, their expanded
outputs and shortcut projections alike; input and output sizes fixed) scaled by one factor.

The factor matches a size (``match``): ``"size"`` (default) the sparse model's storage in App. H's
convention, 32 bits per nonzero plus a 1-bit mask entry per sparsified weight, i.e. nonzeros +
N_sparsified/32 parameters; ``"params"`` the nonzero count alone. "size" reproduces the widths of
the paper's ResNet-50 Small-Dense models (0.465 at S = 0.8, 0.34 at 0.9, matched to ERK; this rule
gives 0.460 and 0.339), "params" gives 0.427 and 0.291. Biases and norms count on both sides.
See docs/methods.md for the derivation.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ...errors import ConfigError
from ...registry import METHODS
from ..distributions import plan_densities
from ..run import RunHooks
from .base import Method

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import SparsityEngine

log = logging.getLogger(__name__)


MATCHES = ("size", "params")
#: bits of one stored value; a mask entry costs 1 bit (Evci et al. 2020, App. H model size)
VALUE_BITS = 32


@dataclass(frozen=True)
class SmallDenseOptions:
    """``match``: "size" (nonzeros + one 1-bit mask entry per sparsified weight, in 32-bit units;
    reproduces the paper's widths) or "params" (nonzeros only)."""

    match: str = "size"


def _plan(cfg, info):
    from ...models import build_model

    s, m = cfg.sparsity, cfg.model
    with torch.device("meta"):
        model = build_model(m.name, info, width=m.width, **m.options)
    return model, plan_densities(model, s.sparsity, s.distribution, dense_first=s.dense_first,
                                 dense_last=s.dense_last, include=s.include, exclude=s.exclude, custom=s.custom,
                                 erk_power=s.erk_power)


def sparse_nonzeros(cfg, info) -> int:
    """Nonzero parameters of ``cfg``'s model (at ``cfg.model.width``) under its sparsity config:
    every parameter minus the zeros of the sparsified layers. Built on the meta device."""
    from ...models import count_parameters

    model, plan = _plan(cfg, info)
    return count_parameters(model) - plan.zeros()


def sparse_size(cfg, info) -> float:
    """Size of ``cfg``'s sparse model in 32-bit parameters: nonzeros + (mask bits)/32, one mask bit
    per weight of every sparsified tensor (App. H: 32·nnz + N bits for a sparse layer)."""
    _, plan = _plan(cfg, info)
    masked = sum(t.param.numel() for t in plan.targets if plan.densities[t.name] < 1.0)
    return sparse_nonzeros(cfg, info) + masked / VALUE_BITS


@METHODS.register("small_dense")
class SmallDense(RunHooks, Method):
    """Dense training of the width-scaled model (Evci et al. 2020, Small-Dense). No masks: the
    Trainer builds the model at the width found by :meth:`adjust_config`."""

    name = "small_dense"
    uses_masks = False
    Options = SmallDenseOptions

    def validate(self) -> None:
        if self.options.match not in MATCHES:
            raise ConfigError(f"small_dense: unknown match '{self.options.match}'; choose one of: {', '.join(MATCHES)}")

    @classmethod
    def adjust_config(cls, cfg, info):
        from ...models import small_dense_width

        m, match = cfg.model, cls(**cfg.sparsity.options).options.match
        target = sparse_size(cfg, info) if match == "size" else sparse_nonzeros(cfg, info)
        width = small_dense_width(m.name, info, target, **m.options)
        log.info("small_dense: width %.4f for %.0f parameters (the sparse model's %s)", width, target, match)
        return dataclasses.replace(cfg, model=dataclasses.replace(m, width=width))

    def init_masks(self, engine: "SparsityEngine"):
        return {t.name: torch.ones_like(t.param, dtype=torch.bool) for t in engine.targets}
