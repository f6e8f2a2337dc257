"""Exact top-k over a score matrix delivered in row blocks, holding only O(k) candidates.

The result equals :func:`sparsity.topk.topk_mask` on the whole matrix — the k largest eligible
scores, ties to the lower flat index, NaN lowest. Blocks arrive in increasing flat-index order.
Each block contributes its own top-k (plus entries tied with its k-th score), a superset of its
share of the global top-k. Candidates are buffered and cut back to the top-k (plus ties) when the
buffer passes 2k, so the work stays linear. Once k candidates are held, their k-th score ``t``
filters later blocks: a later entry scoring ≤ t is beaten by k earlier entries (ties go to the
lower index), so only scores > t are kept. The final choice among candidates, kept in flat-index
order, is made by ``topk_mask`` itself.
"""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

import torch

from ...topk import topk_mask

Candidates = Tuple[torch.Tensor, torch.Tensor]  # (ascending flat positions int64, float scores)


def _clean(scores: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(scores.detach().reshape(-1).float(), nan=-float("inf"))


def _shortlist(scores: torch.Tensor, eligible: torch.Tensor, k: int) -> Tuple[torch.Tensor, Optional[float]]:
    """Indices (ascending) of eligible entries scoring at least the k-th largest eligible score
    (a superset of the exact top-k under any tie rule), and that k-th score (None if fewer than
    k are eligible)."""
    idx = torch.nonzero(eligible).squeeze(1)
    if idx.numel() < k or k == 0:
        return idx, None
    sub = scores[idx]
    kth = torch.topk(sub, k, sorted=False).values.min()
    return idx[sub >= kth], float(kth)


class _Buffer:
    """Candidate buffer: parts appended in flat order, cut back to top-k + ties past 2k."""

    def __init__(self, k: int):
        self.k, self.parts, self.size, self.threshold = k, [], 0, None

    def add(self, idx: torch.Tensor, scores: torch.Tensor) -> None:
        self.parts.append((idx, scores))
        self.size += idx.numel()
        if self.size > 2 * self.k:
            self.cut()

    def cut(self) -> Candidates:
        idx = torch.cat([p[0] for p in self.parts]) if self.parts else torch.zeros(0, dtype=torch.long)
        sc = torch.cat([p[1] for p in self.parts]) if self.parts else torch.zeros(0)
        keep, kth = _shortlist(sc, torch.ones_like(sc, dtype=torch.bool), self.k)
        self.parts, self.size = [(idx[keep], sc[keep])], int(keep.numel())
        if kth is not None:
            self.threshold = kth
        return self.parts[0]


def streaming_topk(blocks: Iterable[Tuple[int, torch.Tensor, torch.Tensor]], k: int) -> torch.Tensor:
    """Sorted flat positions of the exact top-``k`` over ``blocks`` of (offset, scores, eligible),
    given in increasing offset order. Raises ValueError if fewer than ``k`` are eligible."""
    buf = _Buffer(k)
    for offset, scores, eligible in blocks:
        flat, elig = _clean(scores), eligible.reshape(-1).to(scores.device)
        if buf.threshold is not None:
            elig = elig & (flat > buf.threshold)
        idx, _ = _shortlist(flat, elig, k)
        buf.add(idx + offset, flat[idx])
    idx, sc = buf.cut()
    return idx[topk_mask(sc, k)]  # raises if fewer than k candidates
