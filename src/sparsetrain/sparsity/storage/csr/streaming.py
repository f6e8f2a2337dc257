"""Exact top-k over a score matrix delivered in row blocks, holding only O(k) candidates.

The result equals :func:`sparsity.topk.topk_mask` on the whole matrix — the k largest eligible
scores, ties to the lower flat index, NaN lowest. Blocks arrive in increasing flat-index order,
each with the (local, ascending) positions that may not be chosen. A block contributes its own
top-k plus every entry tied with its k-th score: a superset of its share of the global top-k.

The work per block is one selection (:func:`kth_largest` on the block, ineligible entries set to −∞)
and one comparison pass; no per-entry index array of the block is built. Once k candidates are
held, the k-th best score ``t`` seen in any one block filters later blocks: a later entry scoring
≤ t is beaten by k earlier entries (ties go to the lower index), so only scores > t are kept,
usually a small share of a block, which then needs no selection at all. Candidates are cut back
to the top-k (plus ties) when the buffer passes 2k, so the work stays linear. The final choice
among candidates, kept in flat-index order, is made by ``topk_mask`` itself.

A −∞ k-th score cannot tell an eligible −∞ (or NaN) score from an ineligible entry; such a block
is handled exactly, through its eligibility mask.
"""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

import torch

from ...topk import kth_largest, topk_mask

Candidates = Tuple[torch.Tensor, torch.Tensor]  # (ascending flat positions int64, float scores)
_NEG_INF = -float("inf")


def _shortlist(scores: torch.Tensor, eligible: torch.Tensor, k: int) -> Tuple[torch.Tensor, Optional[float]]:
    """Indices (ascending) of eligible entries scoring at least the k-th largest eligible score
    (a superset of the exact top-k under any tie rule), and that k-th score (None if fewer than
    k are eligible)."""
    idx = torch.nonzero(eligible).squeeze(1)
    if idx.numel() < k or k == 0:
        return idx, None
    sub = scores[idx]
    kth = kth_largest(sub, k)
    return idx[sub >= kth], kth


def _block_candidates(flat: torch.Tensor, excluded: torch.Tensor, k: int,
                      threshold: Optional[float]) -> Tuple[torch.Tensor, Optional[float]]:
    """A block's candidates (ascending local indices) and its k-th best eligible score (None if it
    has fewer than k eligible entries or none was computed). ``flat`` (cleaned scores, a copy of
    the caller's) has the excluded entries overwritten with −∞ here."""
    flat.index_fill_(0, excluded, _NEG_INF)
    if threshold is not None:                  # only entries beating k earlier ones can still win
        idx = torch.nonzero(flat > threshold).squeeze(1)
        if idx.numel() <= k:
            return idx, None
        sub = flat[idx]
        kth = kth_largest(sub, k)
        return idx[sub >= kth], kth
    if k == 0 or flat.numel() - excluded.numel() <= k:
        return _exact(flat, excluded, k)
    kth = kth_largest(flat, k)
    if kth == _NEG_INF:                        # −∞ ties with the excluded entries: decide exactly
        return _exact(flat, excluded, k)
    return torch.nonzero(flat >= kth).squeeze(1), kth


def _exact(flat: torch.Tensor, excluded: torch.Tensor, k: int) -> Tuple[torch.Tensor, Optional[float]]:
    eligible = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    eligible[excluded] = False
    return _shortlist(flat, eligible, k)


class _Buffer:
    """Candidate buffer: parts appended in flat order, cut back to top-k + ties past 2k."""

    def __init__(self, k: int):
        self.k, self.parts, self.size, self.threshold = k, [], 0, None

    def add(self, idx: torch.Tensor, scores: torch.Tensor, kth: Optional[float]) -> None:
        self.parts.append((idx, scores))
        self.size += idx.numel()
        if kth is not None:                    # k entries of this block alone score >= kth
            self.threshold = kth if self.threshold is None else max(self.threshold, kth)
        if self.size > 2 * self.k:
            self.cut()

    def cut(self) -> Candidates:
        idx = torch.cat([p[0] for p in self.parts]) if self.parts else torch.zeros(0, dtype=torch.long)
        sc = torch.cat([p[1] for p in self.parts]) if self.parts else torch.zeros(0)
        if self.k == 0 or sc.numel() < self.k:
            self.parts = [(idx, sc)]
            return self.parts[0]
        kth = kth_largest(sc, self.k)
        keep = sc >= kth                           # the top-k and every entry tied with the k-th
        self.parts, self.size = [(idx[keep], sc[keep])], int(keep.sum())
        self.threshold = kth if self.threshold is None else max(self.threshold, kth)
        return self.parts[0]


def streaming_topk(blocks: Iterable[Tuple[int, torch.Tensor, torch.Tensor]], k: int) -> torch.Tensor:
    """Sorted flat positions of the exact top-``k`` over ``blocks`` of (offset, scores, excluded),
    given in increasing offset order; ``excluded`` holds the block's ineligible positions (int64,
    relative to ``offset``). Raises ValueError if fewer than ``k`` are eligible."""
    buf = _Buffer(k)
    for offset, scores, excluded in blocks:
        # as topk_mask: NaN ranks lowest (−∞), a real −∞ just above it (the lowest float)
        flat = torch.nan_to_num(scores.detach().reshape(-1).float(), nan=_NEG_INF)
        if flat.data_ptr() == scores.data_ptr():   # nan_to_num may not copy: never write the caller's scores
            flat = flat.clone()
        idx, kth = _block_candidates(flat, excluded.to(device=flat.device, dtype=torch.long), k, buf.threshold)
        buf.add(idx + offset, flat[idx], kth)
    idx, sc = buf.cut()
    # topk_mask cleans again (NaN → −∞, −∞ → the lowest float): hand it NaN where a NaN was, so
    # that a NaN never ties with a real −∞ score
    return idx[topk_mask(sc.masked_fill(sc == _NEG_INF, float("nan")), k)]  # raises if fewer than k candidates
