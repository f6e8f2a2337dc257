"""Exact-k selection with a deterministic tie rule, shared by every drop and grow step."""
from __future__ import annotations

import torch


def topk_mask(scores: torch.Tensor, k: int, eligible: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask (shape of ``scores``) with exactly ``k`` True entries at the largest scores.

    Only ``eligible`` entries (all, if None) may be chosen; ``k`` must not exceed their number.
    Ties are broken toward the lower flat index (as jaxpruner does), using a stable sort so the
    result never depends on the sorting kernel. NaN scores rank lowest.
    """
    flat = scores.detach().reshape(-1).float()
    flat = torch.nan_to_num(flat, nan=-float("inf"))
    n_eligible = flat.numel() if eligible is None else int(eligible.sum())
    if not 0 <= k <= n_eligible:
        raise ValueError(f"cannot select {k} of {n_eligible} eligible entries")
    out = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k == 0:
        return out.view_as(scores)
    if eligible is not None:
        # ineligible entries must never win, even against -inf eligible ones: rank them apart
        order = _stable_order(flat, eligible.reshape(-1))
    else:
        order = torch.sort(flat, descending=True, stable=True).indices
    out[order[:k]] = True
    return out.view_as(scores)


def _stable_order(flat: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """Indices of eligible entries by descending score (ties: lower index first), then the rest."""
    idx = torch.nonzero(eligible, as_tuple=False).squeeze(1)
    sub = torch.sort(flat[idx], descending=True, stable=True).indices
    return idx[sub]


def count_zeros(numel: int, sparsity: float) -> int:
    """Number of zeros of a layer at ``sparsity``: floor(S·N), the official RigL rounding rule.

    S·N is rounded to 9 decimals first so that e.g. S = 1 - 0.1 (0.8999999…) on N = 10 gives 9,
    the count a user means, not 8.
    """
    return int(round(sparsity * numel, 9) // 1)


def count_active(numel: int, density: float) -> int:
    """Active weights of a layer at ``density``: N − floor((1 − d)·N)."""
    return numel - count_zeros(numel, 1.0 - density)
