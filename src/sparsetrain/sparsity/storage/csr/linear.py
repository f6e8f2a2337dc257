"""SparseLinear: a Linear layer whose trainable weight is the CSR values vector.

The layer owns the connectivity (int32 ``crow_indices``/``col_indices`` buffers, saved in its
state_dict) and a cache of the transposed structure used by the backward pass. The values
vector is the ``nn.Parameter``: any torch optimizer therefore keeps momentum / Adam moments of
size nnz, never of the dense shape. The sparsity pattern *is* the mask — a connection grown
with value 0 stays in the pattern — so masks never need a dense tensor here.
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch
from torch import nn

from ....flops import register_counter, weighted_row
from .indices import (INDEX_DTYPE, Transposed, csr_from_flat, csr_tensor, flat_from_csr, flat_from_mask, random_flat,
                  transpose)
from ...topk import count_active
from .functional import Pattern, sparse_linear


class SparseLinear(nn.Module):
    """y = x Wᵀ + b with W (``out_features`` × ``in_features``) stored as CSR.

    Build it with :meth:`from_dense` (a masked ``nn.Linear``), :meth:`random` (no dense matrix
    at all: for models too big to exist densely) or directly from sorted flat positions.
    Training, inference and gradients cost O(nnz · batch); see :mod:`.functional`.
    """

    def __init__(self, in_features: int, out_features: int, flat: torch.Tensor, values: torch.Tensor,
                 bias: Optional[torch.Tensor] = None, cache_transpose: bool = True):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.values = nn.Parameter(values.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.register_buffer("crow_indices", torch.zeros(0, dtype=INDEX_DTYPE))
        self.register_buffer("col_indices", torch.zeros(0, dtype=INDEX_DTYPE))
        #: keep Wᵀ's structure (8 bytes per connection) between steps, or rebuild it in every
        #: backward pass that needs the input gradient (a stable int32 sort of nnz keys)
        self.cache_transpose = bool(cache_transpose)
        self._transposed: Optional[Transposed] = None
        #: when a list, the backward pass appends (x, ∂L/∂y) to it (the engine's RigL capture)
        self.capture: Optional[List] = None
        #: which implementation runs the products: "mkl" or "sparseprop" (see .functional)
        self.kernel = "mkl"
        self._set_pattern(flat.to(self.values.device))

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
    def shape(self) -> tuple:
        return (self.out_features, self.in_features)

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def density(self) -> float:
        return self.nnz / max(1, self.out_features * self.in_features)

    def flat_indices(self) -> torch.Tensor:
        """Sorted flat positions (int64) of the connections, in storage order."""
        return flat_from_csr(self.crow_indices, self.col_indices, self.in_features)

    def pattern(self) -> Pattern:
        return Pattern(self.shape, self.crow_indices, self.col_indices, self.transposed, self.kernel)

    def transposed(self, crow: torch.Tensor, col: torch.Tensor) -> Transposed:
        """Wᵀ's CSR structure for the pattern (crow, col); built at first use (the first layer of
        a network never needs it) and kept while the pattern lives if ``cache_transpose``."""
        cached = self._transposed
        if cached is not None and cached[0] is col:
            return cached[1]
        t = transpose(crow, col, self.shape)
        if self.cache_transpose and col is self.col_indices:
            self._transposed = (col, t)
        return t

    def index_bytes(self) -> int:
        """Bytes held for the structure: CSR indices plus the cached transpose, if any."""
        n = self.crow_indices.numel() * 4 + self.col_indices.numel() * 4
        if self._transposed is not None:
            n += sum(x.numel() * x.element_size() for x in self._transposed[1])
        return n

    def mask_view(self) -> torch.Tensor:
        """The mask as a sparse CSR bool tensor sharing this layer's indices (no dense memory)."""
        ones = torch.ones(1, dtype=torch.bool, device=self.values.device).expand(self.nnz)
        return csr_tensor(self.crow_indices, self.col_indices, ones, self.shape)

    def mask(self) -> torch.Tensor:
        """The mask as a dense bool tensor (out × in)."""
        m = torch.zeros(self.out_features * self.in_features, dtype=torch.bool, device=self.values.device)
        m[self.flat_indices()] = True
        return m.view(self.shape)

    def weight_csr(self) -> torch.Tensor:
        """The weight as a torch sparse CSR tensor (values detached)."""
        return csr_tensor(self.crow_indices, self.col_indices, self.values.detach(), self.shape)

    def dense_weight(self) -> torch.Tensor:
        """The weight as a dense tensor (zeros off the pattern)."""
        w = torch.zeros(self.out_features * self.in_features, dtype=self.values.dtype, device=self.values.device)
        w[self.flat_indices()] = self.values.detach()
        return w.view(self.shape)

    def to_linear(self) -> nn.Linear:
        """An equivalent dense ``nn.Linear``."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.values.device, dtype=self.values.dtype)
        with torch.no_grad():
            out.weight.copy_(self.dense_weight())
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out

    @torch.no_grad()
    def set_pattern(self, flat: torch.Tensor, values: torch.Tensor) -> nn.Parameter:
        """Replace the connectivity by sorted flat positions ``flat`` with ``values``; returns the
        ``values`` Parameter. With an unchanged count it is the same object (optimizers keep
        referencing it; only its data changes). A new count gets a new Parameter, which the
        caller swaps into its optimizer: autograd fixes a leaf's shape for as long as a graph
        built on it lives (a training loop keeps the last loss), so a leaf cannot be resized."""
        values = values.to(self.values)
        if values.numel() == self.values.numel():
            self.values.data = values
        else:
            self.values = nn.Parameter(values, requires_grad=self.values.requires_grad)
        self._set_pattern(flat)
        return self.values

    def _set_pattern(self, flat: torch.Tensor) -> None:
        if flat.numel() != self.values.numel():
            raise ValueError(f"{flat.numel()} positions for {self.values.numel()} values")
        self.crow_indices, self.col_indices = csr_from_flat(flat, self.shape)
        self._transposed = None

    # --- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sparse_linear(x, self.values, self.bias, self.pattern(), self.capture)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nnz={self.nnz}, density={self.density:.4f}, bias={self.bias is not None}")

    # --- persistence --------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """Accept a saved pattern of any size: resize values and indices before loading."""
        values, col = state_dict.get(prefix + "values"), state_dict.get(prefix + "col_indices")
        if values is not None and col is not None and values.numel() == col.numel():
            self.values.data = torch.empty_like(values, device=self.values.device, dtype=self.values.dtype)
            self.col_indices = torch.empty_like(col, device=self.col_indices.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        self._transposed = None


def _count_flops(m: SparseLinear, inputs, output: torch.Tensor, density) -> list:
    """FLOPs rows of a compressed Linear (``sparsetrain.flops``): as nn.Linear's, the density being
    the layer's own nnz share."""
    return [weighted_row("", m.shape, m.density, m.in_features, output.numel(), m.bias is not None)]


register_counter(SparseLinear, _count_flops)
