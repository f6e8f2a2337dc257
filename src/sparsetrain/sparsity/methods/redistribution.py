"""Layer-wise redistribution of regrown weights (Dettmers & Zettlemoyer 2019; the RigL
reproducibility report's 'redistribution' option). Pure functions."""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional

import torch

REDISTRIBUTIONS = ("none", "momentum", "magnitude", "nonzeros")


def layer_statistic(kind: str, active_weight: torch.Tensor, active_ema: Optional[torch.Tensor]) -> float:
    """Mean |momentum| (or |w|) over the layer's active weights, or its active count.

    ``active_weight`` / ``active_ema`` hold only the active entries, as
    ``SparsityEngine.active_values`` returns them for dense and compressed layers alike.
    """
    n = active_weight.numel()
    if kind == "nonzeros":
        return float(n)
    src = active_ema if kind == "momentum" else active_weight
    if src is None or n == 0:
        return 0.0
    return float(src.detach().abs().mean())


def apportion(stats: Mapping[str, float], total: int, capacity: Mapping[str, int],
              fallback: Mapping[str, int]) -> Dict[str, int]:
    """Split ``total`` integer slots over layers ∝ ``stats``, never above ``capacity``.

    Largest-remainder rounding makes the parts sum to ``total`` exactly; a layer that hits its
    capacity is frozen there and its excess is shared among the rest (SNFS does the same with up
    to 1000 passes). With all-zero statistics the ``fallback`` split is returned unchanged.
    """
    if total <= 0:
        return {n: 0 for n in stats}
    if sum(stats.values()) <= 0:
        return dict(fallback)
    out = {n: 0 for n in stats}
    free = {n for n in stats if capacity[n] > 0}
    left = total
    while left > 0 and free:
        # layers left with room may all have a zero statistic: share evenly among them then
        weight = sum(stats[n] for n in free)
        share = {n: left * stats[n] / weight if weight > 0 else left / len(free) for n in free}
        part = {n: min(math.floor(share[n]), capacity[n] - out[n]) for n in free}
        rest = left - sum(part.values())
        # hand out the rounding remainder by largest fractional part (ties: name order)
        for n in sorted(free, key=lambda n: (-(share[n] - math.floor(share[n])), n)):
            if rest <= 0:
                break
            if part[n] < capacity[n] - out[n]:
                part[n] += 1
                rest -= 1
        for n in free:
            out[n] += part[n]
        left = total - sum(out.values())
        free = {n for n in free if out[n] < capacity[n]}
        if all(part[n] == 0 for n in part) and left > 0:
            # nothing moved: give remaining slots one by one wherever there is room
            for n in sorted(free):
                take = min(left, capacity[n] - out[n])
                out[n] += take
                left -= take
    return out
