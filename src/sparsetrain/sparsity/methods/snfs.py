"""SNFS as the RigL paper runs it: grow by the momentum of dense gradients, every layer keeping its count.

Dettmers & Zettlemoyer's original algorithm (with redistribution, a dense momentum buffer and a
per-epoch schedule) is the separate method ``sparse_momentum`` (:mod:`.sparse_momentum`).
"""
from dataclasses import dataclass

import torch

from ...registry import METHODS
from .base import DynamicOptions
from .set import SET


@dataclass(frozen=True)
class SNFSOptions(DynamicOptions):
    """The RigL paper's schedule (ΔT = 100, α = 0.3, cosine to T_end = 0.75·T) and no
    redistribution, as in its Table 2 SNFS row (the official code's ``momentum`` method)."""

    redistribution: str = "none"


@METHODS.register("snfs")
class SNFS(SET):
    """Sparse momentum as the RigL paper's SNFS baseline (Evci et al., ICML 2020, Table 2; grow
    rule of Dettmers & Zettlemoyer 2019, "Sparse Networks from Scratch").

    Keeps an exponential moving average (β = ``momentum``) of the dense gradients of every
    sparsified layer, updated every step — the reason its training cost is 2·f_S + f_D per step.
    Drops the smallest |w| and grows where |EMA| is largest, per layer, so every layer keeps its
    count (``redistribution="momentum"`` moves counts between layers by mean |EMA| instead).
    New weights start at zero with zero optimizer state, as for RigL.
    """

    name = "snfs"
    runs_on_compressed = True
    Options = SNFSOptions

    @property
    def tracks_momentum(self) -> bool:
        return True

    def grow_scores(self, engine, name: str) -> torch.Tensor:
        # before the first observed gradient (explicit update_masks) the EMA is the gradient itself
        m = self.ema.get(name)
        return engine.dense_grad(name).abs() if m is None else m.abs()

    def grow_scores_rows(self, engine, name: str, rows: slice, n_cols: int) -> torch.Tensor:
        m = self.ema.get(name)
        if m is None:
            return engine.dense_grad_rows(name, rows).abs()
        return m.reshape(m.shape[0], -1)[rows].abs()
