"""SNFS: grow by the momentum of dense gradients, with layer-wise redistribution."""
from dataclasses import dataclass

import torch

from ...registry import METHODS
from .base import DynamicOptions
from .set import SET


@dataclass(frozen=True)
class SNFSOptions(DynamicOptions):
    redistribution: str = "momentum"


@METHODS.register("snfs")
class SNFS(SET):
    """Sparse Networks From Scratch / sparse momentum (Dettmers & Zettlemoyer 2019).

    Keeps an exponential moving average (β = ``momentum``) of the dense gradients of every
    sparsified layer, updated every step — the reason its training cost is 2·f_S + f_D per step
    in the RigL paper. Grows where |EMA| is largest; the number grown per layer follows each
    layer's mean |EMA| over its active weights (redistribution). The schedule defaults are the
    RigL paper's (ΔT = 100, α = 0.3, cosine), as in its SNFS comparison.
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
