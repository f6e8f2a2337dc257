"""The sparse linear map y = x Wᵀ + b as a custom autograd function on CSR kernels.

With W (out × in) stored as CSR values v at pattern P:

* forward:      yᵀ = W xᵀ (+ b)            ``torch.sparse.mm(W, xᵀ)``  (CSR × dense; ``addmm`` with a bias)
* input grad:   ∂L/∂xᵀ = Wᵀ (∂L/∂y)ᵀ       ``torch.sparse.mm(Wᵀ, gᵀ)`` with Wᵀ's CSR kept per topology
* weight grad:  ∂L/∂v = ((∂L/∂y)ᵀ x)|_P    ``torch.sparse.sampled_addmm`` — only the nonzeros

so every product costs O(nnz · batch). ``F.linear(x, W_csr)`` and dense × CSR products are
several times slower on CPU (measured in docs/performance.md) and are avoided.

Kernels (``Pattern.kernel``): "native" runs the same three products on this package's C kernels
(:mod:`.native`: the forward and the input gradient as CSR × dense into row-major outputs, the
weight gradient as a sampled dot product per nonzero; threads split by nonzeros); "mkl" on
torch's (MKL's CSR × dense, torch's ``sampled_addmm``); "auto" is "native" for float32 CPU
values where it was built, else "mkl".

With ``kernel="sparseprop"`` the three products run on the AVX2 kernels of the sparseprop
package (Nikdan et al., "SparseProp: Efficient Sparse Backpropagation for Faster Training of
Neural Networks", ICML 2023), which take the same int32 CSR arrays and need no Wᵀ structure;
the engine's factor capture works the same way. Computing yᵀ
rather than y makes the output a transposed view whose ``.T`` is contiguous, so the next layer's
``xᵀ`` costs no copy.
"""
from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional, Tuple

import functools

import torch
from torch.profiler import record_function

from . import native
from .indices import Transposed, csr_tensor


class Pattern(NamedTuple):
    """Everything a product needs besides the values: shape, W's CSR indices, and a function
    giving Wᵀ's structure (cached by the layer, or rebuilt on demand: see SparseLinear)."""

    shape: Tuple[int, int]
    crow: torch.Tensor
    col: torch.Tensor
    transposed: Callable[[torch.Tensor, torch.Tensor], Transposed]
    kernel: str = "auto"

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        return csr_tensor(self.crow, self.col, values, self.shape)

    def transposed_matrix(self, values: torch.Tensor) -> torch.Tensor:
        """Wᵀ in CSR: its cached structure and the values gathered through the stored permutation
        (``index_select`` takes the int32 permutation as it is; ``values[perm]`` would convert it
        to int64 and gather on one thread, ≈ 10x slower at 10⁶ entries)."""
        t = self.transposed(self.crow, self.col)
        return csr_tensor(t.crow, t.row, values.index_select(0, t.perm), (self.shape[1], self.shape[0]))


def resolve_kernel(kernel: str, values: torch.Tensor) -> str:
    """The kernel that runs: "auto" is "native" for float32 CPU values where it was built, else "mkl"."""
    if kernel != "auto":
        return kernel
    ok = values.dtype == torch.float32 and values.device.type == "cpu" and native.available()
    return "native" if ok else "mkl"


@functools.lru_cache(maxsize=None)
def sparseprop_backend():
    """sparseprop's compiled module, or None when the package is not installed."""
    try:
        from sparseprop import backend
    except ImportError:
        return None
    return backend


def _sparseprop_args(pattern: Pattern, values: torch.Tensor, *tensors: torch.Tensor):
    if values.dtype != torch.float32 or values.device.type != "cpu":
        raise TypeError(f"the sparseprop kernel runs float32 on the CPU; this layer is {values.dtype} on "
                        f"{values.device}: use kernel='mkl'")
    return (pattern.crow, pattern.col, values.detach()) + tuple(t.detach().contiguous() for t in tensors)


def _sparseprop_forward(x: torch.Tensor, values: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    crow, col, v, xt = _sparseprop_args(pattern, values, x.T)
    out = x.new_zeros(pattern.shape[0], x.shape[0])
    sparseprop_backend().sparse_linear_vectorized_forward(xt, crow, col, v, out)
    return out.T


def _sparseprop_backward(x: torch.Tensor, values: torch.Tensor, grad: torch.Tensor, pattern: Pattern):
    crow, col, v, xt, gt = _sparseprop_args(pattern, values, x.T, grad.T)
    grad_xt, grad_v = torch.zeros_like(xt), torch.zeros_like(v)
    sparseprop_backend().sparse_linear_vectorized_backward(xt, crow, col, v, gt, grad_xt, grad_v)
    return grad_xt.T, grad_v


def _mkl_forward(x: torch.Tensor, values: torch.Tensor, bias: Optional[torch.Tensor], pattern: Pattern) -> torch.Tensor:
    """y = x Wᵀ + b computed as yᵀ = W xᵀ (+ b) straight into the memory of a y laid out
    column-major: y is not a view (an in-place ReLU may follow) and y.T is contiguous. The bias
    initialises the output the product accumulates into (``addmm``): no second pass over y."""
    y = torch.empty_strided((x.shape[0], pattern.shape[0]), (1, x.shape[0]), dtype=x.dtype, device=x.device)
    if bias is None:
        torch.mm(pattern.matrix(values), x.T, out=y.T)
    else:
        torch.addmm(bias.unsqueeze(1), pattern.matrix(values), x.T, out=y.T)
    return y


def _native_forward(x: torch.Tensor, values: torch.Tensor, bias: Optional[torch.Tensor],
                    pattern: Pattern) -> Tuple[torch.Tensor, torch.Tensor]:
    """(y, xᵀ): y = x Wᵀ + b row-major, as any PyTorch layer's output (the kernel computes W xᵀ
    and writes it transposed, the bias with it), and xᵀ contiguous, which the weight gradient
    reads. Row-major keeps the element-wise work and the dense layers around a sparse layer on
    their fast paths: a column-major activation met by a row-major gradient made ReLU's backward
    more than 10x and a dense head's forward ≈ 6x slower (docs/performance.md, Kernels)."""
    x_t = x.T.contiguous()
    y = torch.empty(x.shape[0], pattern.shape[0], dtype=x.dtype, device=x.device)
    native.spmm(pattern.crow, pattern.col, values.detach(), x_t,
                None if bias is None else bias.detach().contiguous(), out=y, transposed=True)
    return y, x_t


def _native_backward(x_t: torch.Tensor, values: torch.Tensor, grad: torch.Tensor, pattern: Pattern,
                     need_x: bool, need_v: bool):
    """∂L/∂x (row-major, through Wᵀ's CSR) and ∂L/∂v (at the nonzeros) on the C kernels."""
    g_t = grad.T.contiguous()
    grad_x = grad_v = None
    if need_x:
        with record_function("sparse_linear.grad_input"):
            t = pattern.transposed(pattern.crow, pattern.col)  # Wᵀ's structure, read through W's values
            grad_x = native.spmm(t.crow, t.row, values.detach(), g_t, transposed=True, perm=t.perm)
    if need_v:
        with record_function("sparse_linear.grad_weight"):
            grad_v = native.sddmm(pattern.crow, pattern.col, g_t, x_t)
    return grad_x, grad_v


class SparseLinearFunction(torch.autograd.Function):
    """Autograd function of :func:`sparse_linear` (inputs are 2-D)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, values: torch.Tensor, bias: Optional[torch.Tensor],
                pattern: Pattern, sink: Optional[List]) -> torch.Tensor:
        kernel = resolve_kernel(pattern.kernel, values)
        with record_function("sparse_linear.forward"):
            if kernel == "sparseprop":
                y = _sparseprop_forward(x, values, pattern)
                y = y if bias is None else y + bias
            elif kernel == "native":
                y, x = _native_forward(x, values, bias, pattern)  # keeps xᵀ: the backward reads it
                x = x.T
            else:
                y = _mkl_forward(x, values, bias, pattern)
        ctx.save_for_backward(x, values)
        ctx.pattern, ctx.kernel, ctx.sink, ctx.has_bias = pattern, kernel, sink, bias is not None
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, values = ctx.saved_tensors
        pattern, kernel = ctx.pattern, ctx.kernel
        grad_x = grad_v = grad_b = None
        if kernel == "native":
            grad_x, grad_v = _native_backward(x.T, values, grad, pattern, *ctx.needs_input_grad[:2])
        elif kernel == "sparseprop" and any(ctx.needs_input_grad[:2]):
            with record_function("sparse_linear.sparseprop_backward"):  # both gradients in one pass
                grad_x, grad_v = _sparseprop_backward(x, values, grad, pattern)
            grad_x = grad_x if ctx.needs_input_grad[0] else None
            grad_v = grad_v if ctx.needs_input_grad[1] else None
        elif ctx.needs_input_grad[0]:
            with record_function("sparse_linear.grad_input"):
                grad_x = torch.sparse.mm(pattern.transposed_matrix(values), grad.T).T
        if ctx.needs_input_grad[1] and kernel == "mkl":
            with record_function("sparse_linear.grad_weight"):
                # beta=0: the pattern's own values are not added in, only the sampled product
                grad_v = torch.sparse.sampled_addmm(pattern.matrix(values), grad.T, x, beta=0.0).values()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        if ctx.sink is not None:
            # RigL-style grow scores need the dense gradient ∂L/∂W = gᵀx; keep its factors
            ctx.sink.append((x.detach(), grad.detach()))
        return grad_x, grad_v, grad_b, None, None


def sparse_linear(x: torch.Tensor, values: torch.Tensor, bias: Optional[torch.Tensor],
                  pattern: Pattern, sink: Optional[List] = None) -> torch.Tensor:
    """y = x Wᵀ + b for W = CSR(pattern, values); any leading batch dimensions.

    ``sink``, if a list, receives ``(x, ∂L/∂y)`` (2-D) at each backward pass, from which the
    dense weight gradient can be formed block by block (see ``CSRStore.dense_grad_rows``).
    """
    if x.dim() == 2:
        return SparseLinearFunction.apply(x, values, bias, pattern, sink)
    lead = x.shape[:-1]
    y = SparseLinearFunction.apply(x.reshape(-1, x.shape[-1]), values, bias, pattern, sink)
    return y.reshape(*lead, pattern.shape[0])


class SequenceWeight:
    """A sparse matrix W = CSR(pattern, values) applied at every step of a sequence (an RNN's
    recurrent weight): ``step(h, bias)`` = h Wᵀ + b.

    W and Wᵀ are built once per sequence, not per step, and the weight gradient
    ∂L/∂v = Σ_t (g_tᵀ h_t)|_P is one sampled product over all T·B rows at the end of the backward
    pass instead of T small ones (each step's backward only computes ∂L/∂h = g W and keeps
    (h, g)). ``sink``, if a list, receives the concatenated (h, g) factors once.
    """

    def __init__(self, values: torch.Tensor, pattern: Pattern, sink: Optional[List] = None):
        self.values, self.pattern, self.sink = values, pattern, sink
        self.kernel = "native" if resolve_kernel(pattern.kernel, values) == "native" else "mkl"
        self.matrix = pattern.matrix(values.detach())
        self.pairs: List[Tuple[torch.Tensor, torch.Tensor]] = []
        self._transposed: Optional[torch.Tensor] = None
        # the steps feed their share of ∂L/∂v into this token; its backward runs after all of theirs
        track = values.requires_grad and torch.is_grad_enabled()
        self.token = _SequenceWeightGrad.apply(values, self) if track else None

    def transposed(self) -> torch.Tensor:
        if self._transposed is None:
            self._transposed = self.pattern.transposed_matrix(self.values.detach())
        return self._transposed

    def product(self, h: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """h Wᵀ (+ b) (row-major on the native kernel)."""
        if self.kernel == "native":
            return native.spmm(self.pattern.crow, self.pattern.col, self.values.detach(), h.T.contiguous(),
                               None if bias is None else bias.detach().contiguous(), transposed=True)
        y = torch.sparse.mm(self.matrix, h.T).T
        return y if bias is None else y + bias

    def product_transposed(self, g: torch.Tensor) -> torch.Tensor:
        """g W (row-major on the native kernel)."""
        if self.kernel == "native":
            t = self.transposed()
            return native.spmm(t.crow_indices(), t.col_indices(), t.values(), g.T.contiguous(), transposed=True)
        return torch.sparse.mm(self.transposed(), g.T).T

    def sampled(self, g_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(gᵀ x) at the pattern, for gᵀ (out × rows) and x (rows × in)."""
        if self.kernel == "native":
            return native.sddmm(self.pattern.crow, self.pattern.col, g_t.contiguous(), x.T.contiguous())
        return torch.sparse.sampled_addmm(self.matrix, g_t, x, beta=0.0).values()

    def step(self, h: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        return _SequenceStep.apply(h, self.token, bias, self)


class _SequenceWeightGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: torch.Tensor, seq: SequenceWeight) -> torch.Tensor:
        ctx.seq = seq
        return values.new_zeros(())

    @staticmethod
    def backward(ctx, _token_grad: torch.Tensor):
        seq = ctx.seq
        pairs, seq.pairs = seq.pairs, []  # free them as soon as they are used
        if not pairs:
            return torch.zeros_like(seq.values), None
        # gᵀ concatenated column-wise is row-major, as the sampled product wants it (no extra transpose copy)
        x, g_t = torch.cat([p[0] for p in pairs]), torch.cat([p[1].T for p in pairs], dim=1)
        with record_function("sparse_rnn.grad_weight"):
            grad_v = seq.sampled(g_t, x)
        if seq.sink is not None:
            seq.sink.append((x, g_t.T))
        return grad_v, None


class _SequenceStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, token: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                seq: SequenceWeight) -> torch.Tensor:
        with record_function("sparse_rnn.step"):
            y = seq.product(h, bias)
        ctx.save_for_backward(h)
        ctx.seq, ctx.has_bias = seq, bias is not None
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (h,) = ctx.saved_tensors
        seq = ctx.seq
        grad_h = grad_token = grad_b = None
        if ctx.needs_input_grad[0]:
            with record_function("sparse_rnn.grad_input"):
                grad_h = seq.product_transposed(grad)
        if ctx.needs_input_grad[1]:
            seq.pairs.append((h.detach(), grad.detach()))
            grad_token = grad.new_zeros(())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_h, grad_token, grad_b, None
