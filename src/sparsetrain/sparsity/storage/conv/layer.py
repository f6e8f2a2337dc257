"""SparseConv2d: a Conv2d layer whose trainable weight is the CSR values vector of its
(out × in·kh·kw) matrix view; structure, masks and topology changes are :class:`CSRWeight`'s."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from ....flops import register_counter, weighted_row
from ...topk import count_active
from ..csr.functional import Pattern, resolve_kernel
from ..csr.indices import flat_from_mask, random_flat
from ..csr.matrix import CSRWeight
from .functional import Geometry, Plan, channels_first, columns, sparse_conv2d, sparseprop_indices, \
    sparseprop_supports


def unsupported_reason(conv: nn.Module) -> Optional[str]:
    """Why ``conv`` (an nn.Conv2d) cannot be compressed, or None. Grouped and depthwise convolutions
    stay masked-dense: a depthwise 3×3 filter has 9 weights per channel, so there is no matrix
    product for a sparse kernel to shorten (see docs/performance.md)."""
    if conv.groups != 1:
        return f"groups={conv.groups} (grouped and depthwise convolutions stay masked-dense)"
    if isinstance(conv.padding, str):
        return f"padding='{conv.padding}' (give the padding as numbers)"
    if conv.padding_mode != "zeros":
        return f"padding_mode='{conv.padding_mode}'"
    return None


def geometry_of(conv: nn.Conv2d) -> Geometry:
    """The :class:`Geometry` of an nn.Conv2d (numeric padding)."""
    pair = nn.modules.utils._pair
    return Geometry(pair(conv.kernel_size), pair(conv.stride), pair(conv.padding), pair(conv.dilation))


class SparseConv2d(CSRWeight):
    """nn.Conv2d (groups = 1, zero padding; any stride, padding, dilation) with its weight in CSR.

    Build it with :meth:`from_dense` (a masked ``nn.Conv2d``), :meth:`random` (never a dense
    weight) or directly from sorted flat positions of the (out, in, kh, kw) weight. Forward and both
    gradients cost O(nnz · N·L); see :mod:`.functional`. ``kernel``: "auto" (sparseprop's kernels
    where :func:`sparseprop_supports` the geometry and dtype and the batch suits them
    (:func:`.functional.sparseprop_route`), else unfold + the native C kernels where built, else
    unfold + MKL), "sparseprop" (sparseprop's kernels for every batch), "native" or "mkl" (unfold +
    that kernel).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, flat: torch.Tensor,
                 values: torch.Tensor, bias: Optional[torch.Tensor] = None, *, stride=1, padding=0,
                 dilation=1, cache_transpose: bool = True):
        k = nn.modules.utils._pair(kernel_size)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.geometry = Geometry(k, nn.modules.utils._pair(stride), nn.modules.utils._pair(padding),
                                 nn.modules.utils._pair(dilation))
        self._sp_indices: Optional[tuple] = None
        super().__init__(out_channels, in_channels * k[0] * k[1], flat, values, bias, cache_transpose)
        self.kernel = "auto"

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_dense(cls, conv: nn.Conv2d, mask: Optional[torch.Tensor] = None, **options) -> "SparseConv2d":
        """The masked weights of ``conv`` (``mask`` defaults to its nonzeros)."""
        reason = unsupported_reason(conv)
        if reason is not None:
            raise ValueError(f"cannot compress this Conv2d: {reason}")
        w = conv.weight.detach()
        flat = flat_from_mask(w != 0 if mask is None else mask.to(device=w.device, dtype=torch.bool))
        bias = None if conv.bias is None else conv.bias.detach()
        return cls(conv.in_channels, conv.out_channels, conv.kernel_size, flat, w.reshape(-1)[flat], bias,
                   stride=conv.stride, padding=conv.padding, dilation=conv.dilation, **options)

    @classmethod
    def random(cls, in_channels: int, out_channels: int, kernel_size, density: float, *, bias: bool = True,
               generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32,
               **options) -> "SparseConv2d":
        """Exact-count uniformly random connectivity with nn.Conv2d's default initialisation
        (kaiming-uniform with a = √5: weights and bias ~ U(−1/√fan_in, 1/√fan_in)) drawn only at
        the active positions — distributed as masking a dense init — never allocating the weight."""
        generator = generator or torch.Generator().manual_seed(0)
        k = nn.modules.utils._pair(kernel_size)
        shape = (out_channels, in_channels * k[0] * k[1])
        n = count_active(math.prod(shape), density)
        bound = 1.0 / math.sqrt(shape[1])
        flat = random_flat(shape, n, generator)
        values = (torch.rand(n, generator=generator, dtype=dtype) * 2 - 1) * bound
        b = (torch.rand(out_channels, generator=generator, dtype=dtype) * 2 - 1) * bound if bias else None
        return cls(in_channels, out_channels, k, flat, values, b, **options)

    # --- structure ----------------------------------------------------------------------------
    @property
    def weight_shape(self) -> tuple:
        return (self.out_channels, self.in_channels) + self.geometry.kernel_size

    @property
    def kernel_size(self) -> Tuple[int, int]:
        return self.geometry.kernel_size

    def uses_sparseprop(self) -> bool:
        return self.kernel in ("auto", "sparseprop") and sparseprop_supports(self.geometry, self.values.dtype)

    def plan(self) -> Plan:
        kernel = "sparseprop" if self.uses_sparseprop() else self._unfold_kernel()
        pattern = Pattern(self.shape, self.crow_indices, self.col_indices, self.transposed, kernel)
        if kernel != "sparseprop":
            return Plan(pattern, self.geometry, None, kernel)
        fallback = self._unfold_kernel() if self.kernel == "auto" else None  # "sparseprop": every batch
        return Plan(pattern, self.geometry, self._sparseprop_indices(), fallback)

    def _unfold_kernel(self) -> str:
        """The products of the unfold path: "native" when asked for (or under "auto" where built,
        float32 on the CPU: :func:`..csr.functional.resolve_kernel`), else "mkl"."""
        return "native" if resolve_kernel(self.kernel, self.values) == "native" else "mkl"

    def _sparseprop_indices(self) -> tuple:
        """sparseprop's index arrays, built at first use and kept while the pattern lives."""
        if self._sp_indices is None:
            self._sp_indices = sparseprop_indices(self.flat_indices(), self.weight_shape, self.crow_indices)
        return self._sp_indices

    def _pattern_changed(self) -> None:
        self._sp_indices = None

    def index_bytes(self) -> int:
        """CSR indices, Wᵀ's structure if cached, and sparseprop's index arrays if built (one int16
        offset per (output, input) channel pair plus two bytes per connection)."""
        extra = self._sp_indices[1:] if self._sp_indices is not None else ()
        return super().index_bytes() + sum(t.numel() * t.element_size() for t in extra)

    def join_factors(self, captured: list) -> Tuple[torch.Tensor, torch.Tensor]:
        """(X, G): the patch matrix and the (out × N·L) output gradient of every use in a step."""
        x, g = torch.cat([x for x, _ in captured]), torch.cat([g for _, g in captured])
        return columns(x, self.geometry), channels_first(g)

    def grad_rows(self, factors: Tuple[torch.Tensor, torch.Tensor], rows: slice) -> torch.Tensor:
        """Rows (output channels) of ∂L/∂W = G Xᵀ as a matrix: one block's product, never all of it."""
        x_cols, g = factors
        return g[rows] @ x_cols.T

    def to_conv(self) -> nn.Conv2d:
        """An equivalent dense ``nn.Conv2d``."""
        geo = self.geometry
        return self.copy_into(nn.Conv2d(self.in_channels, self.out_channels, geo.kernel_size, geo.stride,
                                        geo.padding, geo.dilation, bias=self.bias is not None,
                                        device=self.values.device, dtype=self.values.dtype))

    # --- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sparse_conv2d(x, self.values, self.bias, self.plan(), self.capture)

    def extra_repr(self) -> str:
        g = self.geometry
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={g.kernel_size}, stride={g.stride}, "
                f"padding={g.padding}, dilation={g.dilation}, nnz={self.nnz}, density={self.density:.4f}, "
                f"bias={self.bias is not None}, kernel={self.kernel}")


def _count_flops(m: SparseConv2d, inputs, output: torch.Tensor, density) -> list:
    """FLOPs rows of a compressed Conv2d (``sparsetrain.flops``): as nn.Conv2d's, the density being
    the layer's own nnz share."""
    return [weighted_row("", m.weight_shape, m.density, m.n_cols, output.numel(), m.bias is not None)]


register_counter(SparseConv2d, _count_flops)
