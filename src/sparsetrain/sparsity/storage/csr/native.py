"""Python side of the native CSR kernels (``_native.c``, built at install when a C compiler is
there): argument checks and output allocation around the two products the sparse linear map
needs on the CPU, float32 with int32 indices.

* :func:`spmm` — ``W x (+ b)`` for W in CSR and x row-major (the forward yᵀ = W xᵀ, and the
  input gradient with Wᵀ's CSR);
* :func:`sddmm` — ``(g xᵀ)`` sampled at W's nonzeros (the weight gradient on the pattern).

Threads: torch's intra-op count (``torch.get_num_threads()``), work split by nonzeros.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch


@functools.lru_cache(maxsize=None)
def module():
    """The compiled module, or None where it was not built (no compiler at install time)."""
    try:
        from . import _native
    except ImportError:
        return None
    return _native


def available() -> bool:
    return module() is not None


def _check(name: str, t: torch.Tensor, dtype: torch.dtype) -> None:
    if t.dtype != dtype or t.device.type != "cpu" or not t.is_contiguous():
        raise TypeError(f"native kernel: {name} must be a contiguous {dtype} CPU tensor, got "
                        f"{t.dtype} on {t.device} (contiguous={t.is_contiguous()}); use kernel='mkl'")


def spmm(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, x: torch.Tensor,
         bias: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None,
         transposed: bool = False, perm: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``W x (+ b[:, None])`` with W = CSR(crow, col, values) of ``crow.numel() - 1`` rows and x
    (W's columns × n) row-major, into ``out`` (allocated if None): rows × n row-major, or with
    ``transposed`` its transpose, n × rows row-major (``x.T @ W.T``, PyTorch's layout of a
    linear layer's output when x holds the inputs as columns). With ``perm`` (int32, one per
    nonzero) the k-th stored nonzero takes ``values[perm[k]]``: Wᵀ's structure over W's own values
    vector, with no gathered copy."""
    m, n = crow.numel() - 1, x.shape[1]
    for name, t, dt in (("crow", crow, torch.int32), ("col", col, torch.int32), ("values", values, torch.float32),
                        ("x", x, torch.float32)):
        _check(name, t, dt)
    if bias is not None:
        _check("bias", bias, torch.float32)
    if perm is not None:
        _check("perm", perm, torch.int32)
        if perm.numel() != col.numel() or values.numel() != col.numel():
            raise ValueError(f"native spmm: perm has {perm.numel()} entries and values {values.numel()}, "
                             f"the pattern {col.numel()}")
    elif values.numel() != col.numel():
        raise ValueError(f"native spmm: {values.numel()} values for {col.numel()} nonzeros")
    shape = (n, m) if transposed else (m, n)
    out = torch.empty(shape, dtype=torch.float32) if out is None else out
    _check("out", out, torch.float32)
    if tuple(out.shape) != shape:
        raise ValueError(f"native spmm: out has shape {tuple(out.shape)}, expected {shape}")
    module().spmm(crow.data_ptr(), col.data_ptr(), values.data_ptr(), x.data_ptr(),
                  0 if bias is None else bias.data_ptr(), out.data_ptr(), m, n, m if transposed else 0,
                  torch.get_num_threads(), 0 if perm is None else perm.data_ptr())
    return out


def sddmm(crow: torch.Tensor, col: torch.Tensor, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``v[p] = g[i] · x[j]`` for every nonzero p = (i, j) of the pattern (crow, col); g (rows × n)
    and x (columns × n) row-major."""
    for name, t, dt in (("crow", crow, torch.int32), ("col", col, torch.int32), ("g", g, torch.float32),
                        ("x", x, torch.float32)):
        _check(name, t, dt)
    if g.shape[1] != x.shape[1]:
        raise ValueError(f"native sddmm: g has {g.shape[1]} columns, x {x.shape[1]}")
    out = torch.empty(col.numel(), dtype=torch.float32)
    module().sddmm(crow.data_ptr(), col.data_ptr(), g.data_ptr(), x.data_ptr(), out.data_ptr(),
                   crow.numel() - 1, g.shape[1], torch.get_num_threads())
    return out
