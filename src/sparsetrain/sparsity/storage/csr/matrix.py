"""CSRWeight: the part of a compressed layer that is its weight matrix in CSR.

The layer owns the connectivity (int32 ``crow_indices``/``col_indices`` buffers, saved in its
state_dict) and a cache of the transposed structure used by backward passes. The values vector is
the ``nn.Parameter``: any torch optimizer therefore keeps momentum / Adam moments of size nnz,
never of the dense shape. The sparsity pattern *is* the mask — a connection grown with value 0
stays in the pattern — so masks never need a dense tensor here.

A layer type (``SparseLinear``, ``SparseConv2d``) subclasses it with its forward pass, its dense
equivalent and the two hooks the engine's layer store uses to form the dense weight gradient from
captured factors (:meth:`join_factors`, :meth:`grad_rows`). The weight viewed as a matrix is
(dim 0 × the rest), so flat positions in the matrix and in the weight tensor coincide.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import nn

from .indices import INDEX_DTYPE, Transposed, csr_from_flat, csr_tensor, flat_from_csr, transpose


class CSRWeight(nn.Module):
    """A weight W (``n_rows`` × ``n_cols`` as a matrix) stored as CSR values + int32 indices."""

    def __init__(self, n_rows: int, n_cols: int, flat: torch.Tensor, values: torch.Tensor,
                 bias: Optional[torch.Tensor] = None, cache_transpose: bool = True):
        super().__init__()
        self.n_rows, self.n_cols = int(n_rows), int(n_cols)
        self.values = nn.Parameter(values.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.register_buffer("crow_indices", torch.zeros(0, dtype=INDEX_DTYPE))
        self.register_buffer("col_indices", torch.zeros(0, dtype=INDEX_DTYPE))
        #: keep Wᵀ's structure (8 bytes per connection) between steps, or rebuild it in every
        #: backward pass that needs the input gradient (a stable int32 sort of nnz keys)
        self.cache_transpose = bool(cache_transpose)
        self._transposed: Optional[Transposed] = None
        #: when a list, the backward pass appends the factors of ∂L/∂W to it (the engine's RigL capture)
        self.capture: Optional[List] = None
        #: which implementation runs the products (see the layer's functional module)
        self.kernel = "auto"
        self._set_pattern(flat.to(self.values.device))

    # --- structure ----------------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        """The weight as a matrix (rows × columns)."""
        return (self.n_rows, self.n_cols)

    @property
    def weight_shape(self) -> tuple:
        """The dense weight's own shape (a conv's 4-D one); the matrix is its (dim 0 × rest) view."""
        return self.shape

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def density(self) -> float:
        return self.nnz / max(1, self.n_rows * self.n_cols)

    def flat_indices(self) -> torch.Tensor:
        """Sorted flat positions (int64) of the connections, in storage order."""
        return flat_from_csr(self.crow_indices, self.col_indices, self.n_cols)

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
        """The mask without dense memory, shaped as the weight: for a matrix a sparse CSR bool
        tensor sharing this layer's indices, otherwise a sparse COO bool tensor."""
        ones = torch.ones(1, dtype=torch.bool, device=self.values.device).expand(self.nnz)
        if len(self.weight_shape) == 2:
            return csr_tensor(self.crow_indices, self.col_indices, ones, self.shape)
        return coo_mask(self.flat_indices(), self.weight_shape)

    def mask(self) -> torch.Tensor:
        """The mask as a dense bool tensor of the weight's shape."""
        m = torch.zeros(self.n_rows * self.n_cols, dtype=torch.bool, device=self.values.device)
        m[self.flat_indices()] = True
        return m.view(self.weight_shape)

    def weight_csr(self) -> torch.Tensor:
        """The weight as a torch sparse CSR matrix (values detached)."""
        return csr_tensor(self.crow_indices, self.col_indices, self.values.detach(), self.shape)

    def dense_weight(self) -> torch.Tensor:
        """The weight as a dense tensor of its own shape (zeros off the pattern)."""
        w = torch.zeros(self.n_rows * self.n_cols, dtype=self.values.dtype, device=self.values.device)
        w[self.flat_indices()] = self.values.detach()
        return w.view(self.weight_shape)

    @torch.no_grad()
    def copy_into(self, dense: nn.Module) -> nn.Module:
        """Fill a freshly built dense equivalent (``weight``, ``bias``) with this layer's values."""
        dense.weight.copy_(self.dense_weight())
        if self.bias is not None:
            dense.bias.copy_(self.bias)
        return dense

    # --- dense gradient from captured factors (the engine's grow scores) ----------------------
    def join_factors(self, captured: list) -> Tuple[torch.Tensor, ...]:
        """One set of factors from those captured at each use of the layer in a step."""
        raise NotImplementedError

    def grad_rows(self, factors: Tuple[torch.Tensor, ...], rows: slice) -> torch.Tensor:
        """Rows ``rows`` of ∂L/∂W (as a matrix) from :meth:`join_factors`' result."""
        raise NotImplementedError

    # --- topology -------------------------------------------------------------------------------
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
        self._pattern_changed()

    def _pattern_changed(self) -> None:
        """Hook for layers keeping other structures derived from the pattern."""

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
        self._pattern_changed()


def coo_mask(flat: torch.Tensor, shape: tuple) -> torch.Tensor:
    """A sparse COO bool tensor of ``shape`` with True at the sorted flat positions ``flat``."""
    idx = torch.stack(torch.unravel_index(flat, shape)) if flat.numel() else \
        torch.zeros(len(shape), 0, dtype=torch.long, device=flat.device)
    ones = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    return torch.sparse_coo_tensor(idx, ones, shape, is_coalesced=True, check_invariants=False)


def coo_flat(mask: torch.Tensor) -> torch.Tensor:
    """Sorted flat positions of the True entries of a sparse COO bool tensor of any rank."""
    mask = mask.coalesce()
    idx = mask.indices()[:, mask.values()]
    strides = [math.prod(mask.shape[d + 1:]) for d in range(mask.dim())]
    return (idx * torch.tensor(strides, device=idx.device).unsqueeze(1)).sum(0)
