"""The sparse 2-D convolution y = W ⋆ x + b as a custom autograd function.

W (out × in/groups × kh × kw) is held as a CSR matrix over its (out × in·kh·kw) view, the trainable
tensor being its values v at the pattern P. With X = unfold(x), the (in·kh·kw × N·L) matrix of
input patches of the whole batch (L output positions per example) and G the (out × N·L) output
gradient:

* forward:      Y = W X                      ``torch.sparse.mm`` (CSR × dense), O(nnz · N·L)
* input grad:   ∂L/∂x = fold(Wᵀ G)           Wᵀ's CSR structure kept per topology
* weight grad:  ∂L/∂v = (G Xᵀ)|_P            ``torch.sparse.sampled_addmm``: only the nonzeros

so every product costs O(nnz · N·L) (kernel "mkl": torch's MKL products; kernel "native": the same
three products on this package's C kernels, :mod:`..csr.native`). X is rebuilt in the backward
pass from the saved input rather than kept (kh·kw times the input's memory per layer).

Kernel "sparseprop" runs the three products on the AVX2 direct-convolution kernels of the
sparseprop package (Nikdan et al., ICML 2023), which read the same values in the same (row-major)
order through their own index format (:func:`sparseprop_indices`); they cover float32, square
kernels, stride 1 or 2, no dilation, one group, symmetric padding (:func:`sparseprop_supports`).
Their main kernels are vectorised over the batch and need a multiple of 8 examples; another batch
runs on the stride-1 kernel vectorised over output columns, or is padded with zero examples
(:func:`sparseprop_route`). Under kernel "auto" a call runs on the unfold path instead where
sparseprop loses by measurement: 1x1 kernels on output maps of 14 columns or fewer (where
unfolding is a reshape: unfold + native ran 1.0-1.3x faster in training at batch 16 and 1.8-3.7x
at batch-1 inference on 256-512 channels, 14x14 and 8x8 maps; on larger maps sparseprop was
faster), the column kernel on maps of 14 columns or fewer (1.5-9x slower than unfold at batch 1-12
on ResNet-50's 7x7 layers) and padding that adds more than a quarter of zero examples (1.5-25x
slower at batch 1 on its stride-2 layers).

``sink``, if a list, receives (x, ∂L/∂y) at each backward pass: the factors of the dense weight
gradient, formed block by block of output channels by the layer (``SparseConv2d.grad_rows``).
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from ..csr import native
from ..csr.functional import Pattern, sparseprop_backend


class Geometry(NamedTuple):
    """Everything but the weight that defines a Conv2d's map (groups are always 1 here)."""

    kernel_size: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]

    def out_size(self, h: int, w: int) -> Tuple[int, int]:
        return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in
                     zip((h, w), self.kernel_size, self.stride, self.padding, self.dilation))


def columns(x: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """X: the (in·kh·kw × N·L) patch matrix of a batch (row order = the weight's flat order)."""
    cols = F.unfold(x, geo.kernel_size, geo.dilation, geo.padding, geo.stride)  # N × in·kh·kw × L
    return cols.transpose(0, 1).reshape(cols.shape[1], -1)


def channels_first(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) → the (C × N·H·W) matrix (one copy)."""
    return t.transpose(0, 1).reshape(t.shape[1], -1)


def sparseprop_supports(geo: Geometry, dtype: torch.dtype) -> bool:
    """Whether sparseprop's conv kernels compute this layer's map."""
    k, s, p = geo.kernel_size, geo.stride, geo.padding
    return (dtype == torch.float32 and k[0] == k[1] and s[0] == s[1] and s[0] in (1, 2)
            and p[0] == p[1] and geo.dilation == (1, 1) and sparseprop_backend() is not None)


#: output maps of at most this many columns are "narrow": there, under kernel "auto", 1x1 kernels and
#: the column kernel lose to the unfold path (per-layer table, docs/performance.md)
NARROW_COLUMNS = 14


def sparseprop_route(n: int, geo: Geometry, out_width: int, strict: bool) -> Optional[str]:
    """How a batch of ``n`` examples runs on sparseprop's kernels: "batch" (a multiple of 8),
    "columns" (the stride-1 kernel vectorised over output columns), "padded" (zero examples up to a
    multiple of 8), or None (the unfold path). ``strict`` (kernel "auto"): None for 1x1 kernels on
    narrow output maps (:data:`NARROW_COLUMNS`), where the column kernel would run on a narrow map,
    or where padding would add more than a quarter of zero examples."""
    narrow = out_width <= NARROW_COLUMNS
    if strict and geo.kernel_size == (1, 1) and narrow:
        return None
    pad = -n % 8
    if pad == 0:
        return "batch"
    if geo.stride[0] == 1 and not (strict and narrow):
        return "columns"
    return "padded" if not strict or 4 * pad <= n else None


def sparseprop_indices(flat: torch.Tensor, weight_shape: tuple, crow: torch.Tensor):
    """sparseprop's conv index format for sorted flat positions ``flat`` of a (O, C, K, K) weight:
    row pointer per output channel, per-(o, c) offsets inside the row (int16), kernel row and
    column per entry (uint8); values stay in our (row-major) order."""
    o_n, c_n, _, _ = weight_shape
    o, c, kx, ky = torch.unravel_index(flat, weight_shape)
    counts = torch.bincount(o * c_n + c, minlength=o_n * c_n).view(o_n, c_n)
    offsets = torch.zeros(o_n, c_n + 1, dtype=torch.int64)
    torch.cumsum(counts, 1, out=offsets[:, 1:])
    return crow, offsets.reshape(-1).to(torch.int16), kx.to(torch.uint8), ky.to(torch.uint8)


def to_chwn(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) → a contiguous (C, H, W, N) tensor, copied as the 2-D transpose of the
    (N × C·H·W) view: torch does that up to 2x faster than the equivalent 4-D permute (WRN-22-2's
    shapes). A batch of one is already in that order: its view is returned."""
    n = t.shape[0]
    if n == 1:  # the same memory order: a view (only ever read)
        return t.reshape(*t.shape[1:], 1)
    out = t.new_empty(*t.shape[1:], n)
    out.view(-1, n).copy_(t.reshape(n, -1).t())
    return out


def from_chwn(t: torch.Tensor, n: Optional[int] = None) -> torch.Tensor:
    """(C, H, W, N') → a new contiguous (n, C, H, W) tensor of its first n examples (all by default)."""
    m = t.reshape(-1, t.shape[-1])
    m = m if n is None else m[:, :n]
    out = t.new_empty(m.shape[1], *t.shape[:-1])
    out.view(m.shape[1], -1).copy_(m.t())
    return out


def _sp_forward(x, values, idx, geo: Geometry, channels: int, route: str,
                keep: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """sparseprop's forward along ``route`` (:func:`sparseprop_route`): (y, the input as the
    backward kernel reads it: C × H × W × N, any batch; None on the column route unless ``keep``,
    as inference needs no copy)."""
    n, _, h, w = x.shape
    oh, ow = geo.out_size(h, w)
    k, p, v = geo.kernel_size[0], geo.padding[0], values.detach()
    if route == "columns":
        out = x.new_zeros(n, channels, oh, ow)
        sparseprop_backend().sparse_conv2d_vectorized_forward_over_on_stride_1(x.detach().contiguous(), *idx, v,
                                                                               out, k, p)
        return out, to_chwn(x.detach()) if keep else None
    xt = to_chwn(x.detach())
    if route == "padded":
        pad = -n % 8
        out = x.new_zeros(channels, oh, ow, n + pad)
        _sp_call_forward(geo, F.pad(xt, (0, pad)), idx, v, out)
        return from_chwn(out, n), xt
    # the kernel writes C × H × W × N; the layers after it get a contiguous (N, C, H, W) copy
    out = x.new_zeros(channels, oh, ow, n)
    _sp_call_forward(geo, xt, idx, v, out)
    return from_chwn(out), xt


def _sp_call_forward(geo: Geometry, xt, idx, v, out) -> None:
    fn = "sparse_conv2d_vectorized_forward_stride_%d" % geo.stride[0]
    getattr(sparseprop_backend(), fn)(xt, *idx, v, out, geo.kernel_size[0], geo.padding[0])


def _sp_backward(xt, values, grad, idx, geo: Geometry):
    """sparseprop's backward from the saved C × H × W × N input: (∂L/∂x, ∂L/∂v)."""
    gt = to_chwn(grad.detach())
    grad_xt, grad_v = torch.zeros_like(xt), torch.zeros_like(values)
    fn = "sparse_conv2d_vectorized_backward_stride_%d" % geo.stride[0]
    getattr(sparseprop_backend(), fn)(xt, *idx, values.detach(), gt, grad_xt, grad_v, geo.kernel_size[0],
                                      geo.padding[0])
    return from_chwn(grad_xt), grad_v


class Plan(NamedTuple):
    """A layer's pattern (CSR, Wᵀ on demand, kernel), its geometry, sparseprop's indices (or None)
    and the kernel of the unfold path ("native" or "mkl") for batches sparseprop does not take."""

    pattern: Pattern
    geometry: Geometry
    sp_indices: Optional[tuple] = None
    unfold_kernel: Optional[str] = None  # None: sparseprop for every batch (kernel asked for by name)

    def unfold(self) -> str:
        """The product kernel of the unfold path."""
        return (self.unfold_kernel or "mkl") if self.pattern.kernel == "sparseprop" else self.pattern.kernel

    def route(self, x: torch.Tensor) -> Optional[str]:
        """sparseprop's route for the batch ``x`` (:func:`sparseprop_route`), None for the unfold path."""
        if self.pattern.kernel != "sparseprop":
            return None
        out_width = self.geometry.out_size(*x.shape[2:])[1]
        return sparseprop_route(x.shape[0], self.geometry, out_width, strict=self.unfold_kernel is not None)


def _mkl_forward(x: torch.Tensor, values: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Y = W X on the unfolded batch (kernel "mkl" or "native"), as an (N, out, oh, ow) view."""
    n, _, h, w = x.shape
    oh, ow = plan.geometry.out_size(h, w)
    cols, p = columns(x, plan.geometry), plan.pattern
    if plan.unfold() == "native":
        y = native.spmm(p.crow, p.col, values.detach(), cols.contiguous())  # out × N·L
    else:
        y = torch.sparse.mm(p.matrix(values), cols)
    return y.view(-1, n, oh, ow).transpose(0, 1)


def _mkl_backward(ctx, x: torch.Tensor, values: torch.Tensor, grad: torch.Tensor, plan: Plan):
    geo, p, grad_x, grad_v = plan.geometry, plan.pattern, None, None
    native_kernel = plan.unfold() == "native"
    g = channels_first(grad)
    if ctx.needs_input_grad[0]:
        with record_function("sparse_conv2d.grad_input"):
            if native_kernel:
                t = p.transposed(p.crow, p.col)  # Wᵀ's structure, read through W's values
                dcols = native.spmm(t.crow, t.row, values.detach(), g.contiguous(), perm=t.perm)
            else:
                dcols = torch.sparse.mm(p.transposed_matrix(values), g)  # in·kh·kw × N·L
            dcols = dcols.view(dcols.shape[0], x.shape[0], -1).transpose(0, 1)
            grad_x = F.fold(dcols, x.shape[2:], geo.kernel_size, geo.dilation, geo.padding, geo.stride)
    if ctx.needs_input_grad[1]:
        with record_function("sparse_conv2d.grad_weight"):
            if native_kernel:
                grad_v = native.sddmm(p.crow, p.col, g.contiguous(), columns(x, geo).contiguous())
            else:
                grad_v = torch.sparse.sampled_addmm(p.matrix(values), g, columns(x, geo).T, beta=0.0).values()
    return grad_x, grad_v


class SparseConv2dFunction(torch.autograd.Function):
    """Autograd function of :func:`sparse_conv2d`. The sparseprop path keeps the input in the
    C × H × W × N layout its backward kernel reads (one copy per step fewer), but returns its
    output and input gradient as contiguous (N, C, H, W) tensors: batch norm and ReLU on the
    kernel's permuted memory order ran 1.5–4.7× slower than on contiguous tensors (WRN-22-2,
    docs/performance.md), far more than the copy costs."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, values: torch.Tensor, bias: Optional[torch.Tensor], plan: Plan,
                sink: Optional[List]) -> torch.Tensor:
        route = plan.route(x)
        with record_function("sparse_conv2d.forward"):
            if route is not None:
                y, saved = _sp_forward(x, values, plan.sp_indices, plan.geometry, plan.pattern.shape[0], route,
                                       keep=any(ctx.needs_input_grad[:2]) or sink is not None)
            else:
                y, saved = _mkl_forward(x, values, plan).contiguous(), None
            if bias is not None:
                y.add_(bias.view(1, -1, 1, 1))  # y is a fresh tensor
        # with a C×H×W×N copy the backward runs on sparseprop's kernels, else on the unfold path from x
        ctx.save_for_backward(x if saved is None else saved, values)
        ctx.plan, ctx.sink, ctx.has_bias, ctx.sp = plan, sink, bias is not None, saved is not None
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        saved, values = ctx.saved_tensors
        plan, sp = ctx.plan, ctx.sp
        x = saved.permute(3, 0, 1, 2) if sp else saved
        grad_x = grad_v = grad_b = None
        if sp and any(ctx.needs_input_grad[:2]):
            with record_function("sparse_conv2d.sparseprop_backward"):  # both gradients in one pass
                grad_x, grad_v = _sp_backward(saved, values, grad, plan.sp_indices, plan.geometry)
            grad_x = grad_x if ctx.needs_input_grad[0] else None
            grad_v = grad_v if ctx.needs_input_grad[1] else None
        elif any(ctx.needs_input_grad[:2]):
            grad_x, grad_v = _mkl_backward(ctx, x, values, grad, plan)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        if ctx.sink is not None:
            ctx.sink.append((x, grad.detach()))
        return grad_x, grad_v, grad_b, None, None


def sparse_conv2d(x: torch.Tensor, values: torch.Tensor, bias: Optional[torch.Tensor], plan: Plan,
                  sink: Optional[List] = None) -> torch.Tensor:
    """y = W ⋆ x + b for W = CSR(plan.pattern, values) over a batch ``x`` (N, C, H, W); an
    unbatched (C, H, W) input gives an unbatched output, as nn.Conv2d."""
    if x.dim() == 3:
        return sparse_conv2d(x.unsqueeze(0), values, bias, plan, sink).squeeze(0)
    return SparseConv2dFunction.apply(x, values, bias, plan, sink)
