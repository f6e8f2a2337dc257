"""Masked-dense storage: the weight stays a dense tensor, the mask a dense bool tensor beside it.

Masks are applied in place (masked weights are physically zero), so the model's state_dict keeps
its plain keys and the dense gradient ∂L/∂(M⊙W) is available after every backward pass. Any layer
type works this way (conv, linear, RNN matrices, ...); it is the store every sparsified tensor
starts in.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..masks import Target
from ..patterns import UNSTRUCTURED, Pattern, update as pattern_update
from .base import GrowScores, LayerStore, Sync


def reset_state(optimizer: Optional[torch.optim.Optimizer], param: nn.Parameter, positions: torch.Tensor) -> None:
    """Zero every per-element optimizer state tensor of ``param`` at ``positions``."""
    if optimizer is None:
        return
    for value in optimizer.state.get(param, {}).values():
        if torch.is_tensor(value) and value.shape == param.shape:
            value[positions] = 0


class MaskedDenseStore(LayerStore):
    """A dense weight and its bool mask (:class:`LayerStore` contract)."""

    def __init__(self, target: Target, mask: torch.Tensor, pattern: Pattern = UNSTRUCTURED):
        super().__init__(target)
        self.pattern = pattern
        self._mask = mask
        self._multiplier: Optional[torch.Tensor] = None

    @property
    def param(self) -> nn.Parameter:
        return self.target.param

    @property
    def mask(self) -> torch.Tensor:
        return self._mask

    @mask.setter
    def mask(self, mask: torch.Tensor) -> None:
        """Replace the mask (it is never modified in place); weights are masked at the next
        :meth:`apply_mask`."""
        self._mask, self._multiplier = mask, None

    def multiplier(self) -> torch.Tensor:
        """The mask in the weight's dtype, cached until the mask is replaced: on CPU, multiplying
        by it is ~6x faster than by the bool mask (0.05 vs 0.30 ms for 300x784), at 4 more bytes
        per weight."""
        m = self._multiplier
        if m is None or m.dtype != self.param.dtype:
            m = self._multiplier = self._mask.to(self.param.dtype)
        return m

    def dense_grad(self) -> torch.Tensor:
        """∂L/∂(M⊙W) (the gradient of a masked weight is not masked); zeros without a gradient."""
        p = self.param
        return torch.zeros_like(p) if p.grad is None else p.grad.detach()

    def dense_grad_rows(self, rows: slice) -> torch.Tensor:
        g = self.dense_grad()
        return g.reshape(g.shape[0], -1)[rows]

    def active_values(self, tensor: Optional[torch.Tensor] = None) -> torch.Tensor:
        t = self.param if tensor is None else tensor
        return t.detach()[self._mask]

    def mask_gradients(self) -> None:
        grad = self.target.param.grad
        if grad is not None:
            grad.mul_(self.multiplier())

    def apply_mask(self) -> None:
        self.target.param.mul_(self.multiplier())

    @torch.no_grad()
    def update(self, n_drop: int, n_grow: int, drop_scores: torch.Tensor, grow: GrowScores, sync: Sync,
               optimizer: Optional[torch.optim.Optimizer]) -> int:
        old = self._mask
        new = sync(pattern_update(self.pattern, old, n_drop, n_grow, drop_scores, grow.whole))
        fresh = new & ~old
        # survivors (kept, or dropped and regrown) keep their value (RigL code: reinit_when_same
        # False); new connections start at zero and dropped ones are zeroed now, not at after_step
        self.param.mul_(new & old)
        reset_state(optimizer, self.param, fresh)
        self.mask = new
        return int(fresh.sum())

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor, optimizer: Optional[torch.optim.Optimizer]) -> None:
        """Weights inside ``mask`` keep their values and optimizer state (stale state at positions
        new to the mask is left in place: it is never read by a method that regrows)."""
        self.mask = mask
        self.apply_mask()

    def mask_state(self) -> torch.Tensor:
        return self._mask.clone()

    def load_mask(self, mask: torch.Tensor) -> None:
        mask = mask.to_dense() if mask.layout != torch.strided else mask
        self.mask = mask.to(device=self.param.device, dtype=torch.bool).clone()
