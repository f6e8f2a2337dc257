"""Exact top-k over a score matrix delivered in row blocks, holding only O(k) candidates.

The result equals :func:`sparsity.topk.topk_mask` on the whole matrix — the k largest eligible
scores, ties to the lower flat index, NaN lowest — because any entry of the global top-k is in
the top-k of its own block; each block contributes its top-k (plus entries tied with its k-th
score) and the running candidate set is cut back to the top-k (plus ties) after each block. The
final choice among candidates, kept in flat-index order, is made by ``topk_mask`` itself.
"""
from __future__ import annotations

from typing import Iterable, Tuple

import torch

from ..sparsity.topk import topk_mask

Candidates = Tuple[torch.Tensor, torch.Tensor]  # (sorted flat positions int64, float scores)


def _clean(scores: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(scores.detach().reshape(-1).float(), nan=-float("inf"))


def _shortlist(scores: torch.Tensor, eligible: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (ascending) of eligible entries scoring at least the k-th largest eligible score:
    a superset of the exact top-k whatever the tie rule."""
    n_eligible = int(eligible.sum())
    if n_eligible <= k:
        return torch.nonzero(eligible).squeeze(1)
    kth = torch.topk(scores.masked_fill(~eligible, -float("inf")), k, sorted=False).values.min()
    return torch.nonzero(eligible & (scores >= kth)).squeeze(1)


def block_candidates(offset: int, scores: torch.Tensor, eligible: torch.Tensor, k: int) -> Candidates:
    """Top-k candidates of one block whose first entry has flat position ``offset``."""
    flat = _clean(scores)
    idx = _shortlist(flat, eligible.reshape(-1), k) if k > 0 else flat.new_zeros(0, dtype=torch.long)
    return idx + offset, flat[idx]


def merge(a: Candidates, b: Candidates, k: int) -> Candidates:
    """Union of two candidate sets (``b`` after ``a`` in flat order), cut back to top-k + ties."""
    idx, sc = torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])
    keep = _shortlist(sc, torch.ones_like(sc, dtype=torch.bool), k)
    return idx[keep], sc[keep]


def streaming_topk(blocks: Iterable[Tuple[int, torch.Tensor, torch.Tensor]], k: int) -> torch.Tensor:
    """Sorted flat positions of the exact top-``k`` over ``blocks`` of (offset, scores, eligible),
    given in increasing offset order. Raises ValueError if fewer than ``k`` are eligible."""
    best = None
    for offset, scores, eligible in blocks:
        cand = block_candidates(offset, scores, eligible, k)
        best = cand if best is None else merge(best, cand, k)
    if best is None:
        best = (torch.zeros(0, dtype=torch.long), torch.zeros(0))
    chosen = topk_mask(best[1], k)  # raises if fewer than k candidates
    return best[0][chosen]
