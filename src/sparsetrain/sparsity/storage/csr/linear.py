"""SparseLinear: a Linear layer whose trainable weight is the CSR values vector.

The structure, masks and topology changes are :class:`.matrix.CSRWeight`'s; this module adds the
forward pass (:mod:`.functional`), the dense equivalent and the dense-gradient factors (x, ∂L/∂y).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from ....flops import register_counter, weighted_row
from .indices import flat_from_mask, random_flat
from ...topk import count_active
from .functional import Pattern, sparse_linear
from .matrix import CSRWeight


class SparseLinear(CSRWeight):
    """y = x Wᵀ + b with W (``out_features`` × ``in_features``) stored as CSR.

    Build it with :meth:`from_dense` (a masked ``nn.Linear``), :meth:`random` (no dense matrix
    at all: for models too big to exist densely) or directly from sorted flat positions.
    Training, inference and gradients cost O(nnz · batch); see :mod:`.functional`.
    """

    def __init__(self, in_features: int, out_features: int, flat: torch.Tensor, values: torch.Tensor,
                 bias: Optional[torch.Tensor] = None, cache_transpose: bool = True):
        super().__init__(out_features, in_features, flat, values, bias, cache_transpose)

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_dense(cls, linear: nn.Linear, mask: Optional[torch.Tensor] = None, **options) -> "SparseLinear":
        """The masked weights of ``linear`` (``mask`` defaults to its nonzeros)."""
        w = linear.weight.detach()
        flat = flat_from_mask(w != 0 if mask is None else mask.to(device=w.device, dtype=torch.bool))
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(linear.in_features, linear.out_features, flat, w.reshape(-1)[flat], bias, **options)

    @classmethod
    def random(cls, in_features: int, out_features: int, density: float, *, bias: bool = True,
               generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32,
               **options) -> "SparseLinear":
        """Exact-count uniformly random connectivity with nn.Linear's default initialisation
        (weights and bias ~ U(−1/√in, 1/√in)), without ever allocating the dense matrix."""
        generator = generator or torch.Generator().manual_seed(0)
        n = count_active(out_features * in_features, density)
        flat = random_flat((out_features, in_features), n, generator)
        bound = 1.0 / math.sqrt(in_features)
        values = (torch.rand(n, generator=generator, dtype=dtype) * 2 - 1) * bound
        b = (torch.rand(out_features, generator=generator, dtype=dtype) * 2 - 1) * bound if bias else None
        return cls(in_features, out_features, flat, values, b, **options)

    # --- structure ----------------------------------------------------------------------------
    @property
    def in_features(self) -> int:
        return self.n_cols

    @property
    def out_features(self) -> int:
        return self.n_rows

    def pattern(self) -> Pattern:
        return Pattern(self.shape, self.crow_indices, self.col_indices, self.transposed, self.kernel)

    def join_factors(self, captured: list) -> Tuple[torch.Tensor, torch.Tensor]:
        """(x, g) of all uses of the layer in a step, stacked along the batch."""
        return torch.cat([x for x, _ in captured]), torch.cat([g for _, g in captured])

    def grad_rows(self, factors: Tuple[torch.Tensor, torch.Tensor], rows: slice) -> torch.Tensor:
        """Rows of ∂L/∂W = gᵀx."""
        x, g = factors
        return g[:, rows].T @ x

    def to_linear(self) -> nn.Linear:
        """An equivalent dense ``nn.Linear``."""
        return self.copy_into(nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                                        device=self.values.device, dtype=self.values.dtype))

    # --- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sparse_linear(x, self.values, self.bias, self.pattern(), self.capture)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nnz={self.nnz}, density={self.density:.4f}, bias={self.bias is not None}")


def _count_flops(m: SparseLinear, inputs, output: torch.Tensor, density) -> list:
    """FLOPs rows of a compressed Linear (``sparsetrain.flops``): as nn.Linear's, the density being
    the layer's own nnz share."""
    return [weighted_row("", m.shape, m.density, m.in_features, output.numel(), m.bias is not None)]


register_counter(SparseLinear, _count_flops)
