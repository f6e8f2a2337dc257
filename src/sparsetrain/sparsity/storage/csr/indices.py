"""Index arithmetic of compressed-sparse-row (CSR) weight matrices: pure functions of tensors.

A sparsity pattern is kept in two equivalent forms: CSR (``crow``, ``col``; int32 because MKL's
sparse BLAS is fastest with 32-bit indices) and sorted flat positions ``row * n_cols + col``
(int64; row-major order, so the k-th stored value of the CSR matrix is the k-th flat position).
Flat positions make set operations (which connections survive an update, which are new) a
``searchsorted`` away, and their order is the tie-break order of :func:`sparsity.topk.topk_mask`.
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple, Sequence, Tuple

import torch

INDEX_DTYPE = torch.int32
_INT32_MAX = 2 ** 31 - 1


class Transposed(NamedTuple):
    """CSR structure of Wᵀ: ``crow`` (n_cols + 1), ``row`` (column index of Wᵀ = row of W) and
    ``perm`` with ``values_T = values[perm]``."""

    crow: torch.Tensor
    row: torch.Tensor
    perm: torch.Tensor


def check_fits_int32(shape: Sequence[int], nnz: int) -> None:
    """MKL CSR kernels take int32 indices: dimensions and nnz must stay below 2³¹."""
    if max(max(shape), nnz) > _INT32_MAX:
        raise ValueError(f"a {tuple(shape)} matrix with {nnz} nonzeros exceeds int32 CSR indices; "
                         "split the layer")


def csr_tensor(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor,
               shape: Tuple[int, int]) -> torch.Tensor:
    """A torch sparse CSR tensor over existing index and value tensors (no copy, no checks)."""
    with warnings.catch_warnings():
        # "sparse CSR support is in beta": said once per process, nothing for a user to act on
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def crow_from_rows(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Row pointer (n_rows + 1, int32) of a pattern given the row of every entry."""
    counts = torch.bincount(rows, minlength=n_rows)
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=rows.device)
    torch.cumsum(counts, 0, out=crow[1:])
    return crow.to(INDEX_DTYPE)


def csr_from_flat(flat: torch.Tensor, shape: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(crow, col) of the pattern with sorted flat positions ``flat`` in a ``shape`` matrix."""
    check_fits_int32(shape, flat.numel())
    rows = torch.div(flat, shape[1], rounding_mode="floor")
    col = (flat - rows * shape[1]).to(INDEX_DTYPE)
    return crow_from_rows(rows, shape[0]), col


def row_ids(crow: torch.Tensor) -> torch.Tensor:
    """Row index (int64) of every stored entry, in storage order."""
    counts = (crow[1:] - crow[:-1]).long()
    return torch.repeat_interleave(torch.arange(counts.numel(), device=crow.device), counts)


def flat_from_csr(crow: torch.Tensor, col: torch.Tensor, n_cols: int) -> torch.Tensor:
    """Sorted flat positions (int64) of a CSR pattern with sorted columns in each row."""
    return row_ids(crow) * n_cols + col.long()


def flat_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Sorted flat positions of the True entries of a (2-D view of a) mask."""
    return torch.nonzero(mask.reshape(-1), as_tuple=False).squeeze(1)


def transpose(crow: torch.Tensor, col: torch.Tensor, shape: Tuple[int, int]) -> Transposed:
    """CSR structure of Wᵀ. Entries are stored by row, so a *stable* sort by column gives Wᵀ's
    storage order (column, then row); a radix-sortable int32 key keeps this O(nnz)."""
    perm = torch.sort(col, stable=True).indices
    rows = row_ids(crow)
    return Transposed(crow_from_rows(col.long(), shape[1]), rows.index_select(0, perm).to(INDEX_DTYPE),
                      perm.to(INDEX_DTYPE))


def match(old_flat: torch.Tensor, new_flat: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """For each new position: its index in ``old_flat`` and whether it was there at all.

    Both inputs are sorted; the result lets any per-connection tensor (weights, momentum, Adam
    moments) follow a topology change with :func:`carry`.
    """
    if old_flat.numel() == 0:
        return torch.zeros_like(new_flat), torch.zeros_like(new_flat, dtype=torch.bool)
    pos = torch.searchsorted(old_flat, new_flat).clamp_(max=old_flat.numel() - 1)
    return pos, old_flat[pos] == new_flat


def carry(old: torch.Tensor, pos: torch.Tensor, found: torch.Tensor) -> torch.Tensor:
    """``old`` re-indexed to a new topology: survivors keep their entry, new positions get 0."""
    return torch.where(found, old.index_select(0, pos), torch.zeros((), dtype=old.dtype, device=old.device))


def random_flat(shape: Sequence[int], n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` distinct uniformly random sorted flat positions in ``shape``, drawn in O(n) memory.

    Draws with replacement and tops up the duplicates (rejection sampling), which is uniform
    over all n-subsets; dense-ish requests (n > numel / 2) use a permutation instead.
    """
    numel = math.prod(shape)
    if not 0 <= n <= numel:
        raise ValueError(f"cannot choose {n} of {numel} positions")
    if 2 * n > numel:
        return torch.sort(torch.randperm(numel, generator=generator)[:n]).values
    flat = torch.empty(0, dtype=torch.int64)
    while flat.numel() < n:
        extra = torch.randint(numel, (n - flat.numel() + 16,), generator=generator)
        flat = torch.unique(torch.cat([flat, extra]))
    # drop a random surplus, not the largest positions, to stay uniform
    keep = torch.randperm(flat.numel(), generator=generator)[:n]
    return torch.sort(flat[keep]).values
