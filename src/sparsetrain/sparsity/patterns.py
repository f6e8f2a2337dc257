"""Sparsity patterns: which masks a layer may hold, and pattern-aware exact-count selection.

A pattern decides how scores are pooled and how the top-k is taken, so every mask-based method
gets every pattern from this one module (the idea of jaxpruner's "sparsity type", Lee et al.
2023, "JaxPruner: A concise library for sparsity research"). A weight is viewed as a matrix,
dim 0 (output channels/features) × the rest flattened in memory order (for a conv:
C_in·k_h·k_w, the layout ``torch.sparse.to_sparse_semi_structured`` and BSR expect):

* ``unstructured``: any entries (:func:`topk.topk_mask`).
* ``N:M`` (e.g. ``2:4``): every group of M consecutive entries of a row keeps the same count,
  N at the target (Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks"; Zhou et al.
  2021, "Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch").
* ``block:RxC`` (e.g. ``block:4x4``, ``block:16x1``): whole R×C blocks of the matrix.
* ``channel`` (also ``channel:out``): whole output channels (rows: a conv filter or a linear unit).
* ``channel:in``: whole input channels (a linear layer's columns; a conv's C_out×k_h×k_w slice of
  one input channel, i.e. a C_out × (k_h·k_w) block of the matrix view): the channel is unused
  by the layer, so the layer before can drop it (:func:`.export.channel_prune`).

Pooling rule (block, channel): a unit's score is the *sum* of its entries' scores. Every method
scores with non-negative values (|w|, |grad|, |EMA|, |g⊙w|, SynFlow's), so this is the L1 norm
of the unit's scores; SET's uniform draws summed per unit still rank the units uniformly at
random. Ties go to the lower unit index, as in :func:`topk.topk_mask`.

Counts: a layer's active count is ``unit_size · count_active(n_units, density)`` (whole blocks or
channels, floor rule of :func:`topk.count_active` on units); for N:M the unit is one entry of
every group (``n_units = M``, ``unit_size`` = number of groups), so every group keeps the same
count and the target density N/M gives exactly N per group.
"""
from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch

from ..errors import ConfigError
from .topk import count_active, topk_mask

KINDS = ("unstructured", "nm", "block", "channel", "in_channel")
EXAMPLES = "unstructured, 2:4 (N:M), block:4x4, channel (channel:out), channel:in"


@dataclass(frozen=True)
class Pattern:
    """A sparsity pattern (see the module docstring). ``n``/``m``: N:M; ``rows``/``cols``: block."""

    kind: str = "unstructured"
    n: int = 0
    m: int = 0
    rows: int = 1
    cols: int = 1

    def __str__(self) -> str:
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            return f"block:{self.rows}x{self.cols}"
        if self.kind == "in_channel":
            return "channel:in"
        return self.kind

    @property
    def structured(self) -> bool:
        return self.kind != "unstructured"

    # --- geometry -----------------------------------------------------------------------------
    def check(self, name: str, shape: Sequence[int]) -> None:
        """ConfigError unless a weight of ``shape`` can hold this pattern."""
        if self.kind == "unstructured":
            return
        if len(shape) < 2:
            raise ConfigError(f"pattern {self} needs a weight matrix; '{name}' has shape {tuple(shape)}")
        r, c = int(shape[0]), math.prod(int(s) for s in shape[1:])
        if self.kind == "nm" and c % self.m:
            raise ConfigError(f"pattern {self} needs the input size of '{name}' ({c}) divisible by {self.m}; "
                              f"choose another M or keep it unstructured with "
                              f"sparsity.pattern_overrides={{\"{name}\": \"unstructured\"}}")
        if self.kind == "block" and (r % self.rows or c % self.cols):
            raise ConfigError(f"pattern {self} needs '{name}' ({r}x{c} as a matrix) divisible into "
                              f"{self.rows}x{self.cols} blocks; choose another block size or set "
                              f"sparsity.pattern_overrides={{\"{name}\": \"unstructured\"}}")

    def units(self, shape: Sequence[int]) -> Tuple[int, int]:
        """(n_units, unit_size): a count of this pattern is ``unit_size · k`` with 0 <= k <= n_units."""
        numel = math.prod(shape)
        if self.kind == "nm":
            return self.m, numel // self.m
        if self.kind in ("block", "channel", "in_channel"):
            r, c = self.block(shape)
            return numel // (r * c), r * c
        return numel, 1

    def block(self, shape: Sequence[int]) -> Tuple[int, int]:
        """Block size (rows, cols) of a block or channel pattern on a weight of ``shape``."""
        if self.kind == "channel":
            return 1, math.prod(shape[1:])
        if self.kind == "in_channel":
            return int(shape[0]), math.prod(shape[2:])
        return self.rows, self.cols

    def count(self, shape: Sequence[int], density: float) -> int:
        """Active entries of a layer of ``shape`` at ``density``, in whole units of the pattern."""
        n_units, size = self.units(shape)
        return size * count_active(n_units, density)


UNSTRUCTURED = Pattern()


def parse_pattern(spec) -> Pattern:
    """``"unstructured"``, ``"2:4"`` / ``"nm:2:4"``, ``"block:4x4"``, ``"channel"`` -> :class:`Pattern`."""
    if isinstance(spec, Pattern):
        return spec
    s = str(spec).strip().lower()
    if s == "unstructured":
        return UNSTRUCTURED
    if s in ("channel", "channel:out"):
        return Pattern("channel")
    if s == "channel:in":
        return Pattern("in_channel")
    nm = re.fullmatch(r"(?:nm:)?(\d+):(\d+)", s)
    if nm:
        n, m = int(nm.group(1)), int(nm.group(2))
        if not 0 < n < m:
            raise ConfigError(f"pattern '{spec}': N:M needs 0 < N < M (e.g. 2:4, 1:4, 4:8)")
        return Pattern("nm", n=n, m=m)
    blk = re.fullmatch(r"block:(\d+)x(\d+)", s)
    if blk:
        r, c = int(blk.group(1)), int(blk.group(2))
        if r < 1 or c < 1 or r * c < 2:
            raise ConfigError(f"pattern '{spec}': a block needs positive sides and 2 or more entries (e.g. block:4x4)")
        return Pattern("block", rows=r, cols=c)
    raise ConfigError(f"unknown sparsity pattern '{spec}'; use one of: {EXAMPLES}")


def resolve(shapes: Mapping[str, Sequence[int]], default="unstructured",
            overrides: Optional[Mapping[str, str]] = None) -> Dict[str, Pattern]:
    """{weight name: pattern}: the first ``overrides`` entry (fnmatch over weight names) matching a
    layer wins, else ``default``; every layer is checked against its pattern. An override that
    matches no sparsified layer is a ConfigError (a typo must not pass silently)."""
    base = parse_pattern(default)
    table = [(pat, parse_pattern(spec)) for pat, spec in (overrides or {}).items()]
    for pat, _ in table:
        if not any(fnmatch.fnmatchcase(n, pat) for n in shapes):
            raise ConfigError(f"pattern override '{pat}' matches no sparsified layer; layers are: {', '.join(shapes)}")
    out = {}
    for name, shape in shapes.items():
        out[name] = next((p for pat, p in table if fnmatch.fnmatchcase(name, pat)), base)
        out[name].check(name, shape)
    return out


def refuse_structured(patterns: Mapping[str, Pattern], what: str, fix: str) -> None:
    """ConfigError naming ``fix`` if any layer of ``patterns`` is structured (``what`` cannot keep it)."""
    bad = {n: str(p) for n, p in patterns.items() if p.structured}
    if bad:
        name = next(iter(bad))
        raise ConfigError(f"{what} supports unstructured sparsity only, but '{name}' has pattern {bad[name]}; "
                          f"{fix} or use sparsity.pattern=unstructured")


# --- pooling ----------------------------------------------------------------------------------
def _matrix(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def pool(pattern: Pattern, scores: torch.Tensor) -> torch.Tensor:
    """Per-unit scores of a block/channel pattern (sum over each block, row-major block order)."""
    r, c = pattern.block(scores.shape)
    mat = _matrix(scores.detach()).float()
    R, C = mat.shape
    return mat.reshape(R // r, r, C // c, c).sum(dim=(1, 3)).reshape(-1)


def pool_all(pattern: Pattern, mask: torch.Tensor) -> torch.Tensor:
    """Per-unit flag: every entry of the block is set."""
    r, c = pattern.block(mask.shape)
    mat = _matrix(mask)
    R, C = mat.shape
    return mat.reshape(R // r, r, C // c, c).all(dim=3).all(dim=1).reshape(-1)


def expand(pattern: Pattern, unit_mask: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Entry mask of ``shape`` from a per-unit (block) mask."""
    r, c = pattern.block(shape)
    R, C = int(shape[0]), math.prod(shape[1:])
    blocks = unit_mask.reshape(R // r, C // c)
    return blocks.repeat_interleave(r, 0).repeat_interleave(c, 1).reshape(*shape)


def _groups(t: torch.Tensor, m: int) -> torch.Tensor:
    """(groups, M) view: M consecutive entries of each row of the matrix view."""
    return t.reshape(-1, m)


def group_top(scores: torch.Tensor, counts: torch.Tensor, eligible: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per row of ``scores`` (groups × M), the ``counts[g]`` largest eligible entries; ties go to
    the lower position and NaN ranks lowest (the rule of :func:`topk.topk_mask`, per group)."""
    s = torch.nan_to_num(scores.detach().float(), nan=-float("inf"))
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    if eligible is not None:
        if bool((eligible.sum(1) < counts).any()):
            raise ValueError("a group has fewer eligible entries than it must select")
        elig = eligible.gather(1, order).to(torch.int8)
        order = order.gather(1, torch.sort(elig, dim=1, descending=True, stable=True).indices)
    rank_ok = torch.arange(s.shape[1], device=s.device).unsqueeze(0) < counts.unsqueeze(1)
    out = torch.zeros_like(s, dtype=torch.bool)
    return out.scatter_(1, order, rank_ok)


# --- selection --------------------------------------------------------------------------------
def select(pattern: Pattern, scores: torch.Tensor, k: int, eligible: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mask (shape of ``scores``) with exactly ``k`` entries in whole units of ``pattern``, at the
    largest (pooled) scores among ``eligible`` entries; ``k`` must be a count of the pattern."""
    if pattern.kind == "unstructured":
        return topk_mask(scores, k, eligible)
    n_units, size = pattern.units(scores.shape)
    if k % size:
        raise ValueError(f"{k} entries are not whole units of pattern {pattern} (units of {size})")
    if pattern.kind == "nm":
        g = _groups(scores, pattern.m)
        counts = torch.full((g.shape[0],), k // size, dtype=torch.long, device=scores.device)
        el = None if eligible is None else _groups(eligible, pattern.m)
        return group_top(g, counts, el).view_as(scores)
    el = None if eligible is None else pool_all(pattern, eligible)
    return expand(pattern, topk_mask(pool(pattern, scores), k // size, el), scores.shape)


def update(pattern: Pattern, old: torch.Tensor, n_drop: int, n_grow: int, drop_scores: torch.Tensor,
           grow_scores: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The new mask of one drop/grow step: keep the top (active − n_drop) of ``drop_scores`` among
    ``old``, grow ``n_grow`` by ``grow_scores()`` among the rest (just-dropped eligible).

    Block/channel: counts are floored to whole units and both steps work on pooled unit scores.
    N:M with growth: the drop is layer-wide (the lowest scores, as unstructured), then each group
    regrows exactly what it lost by its own grow scores, so every group keeps its count (N);
    without growth (pruning), every group keeps the top (active − n_drop)/groups."""
    active = int(old.sum())
    if pattern.kind == "unstructured" or (pattern.kind == "nm" and n_grow == 0):
        keep = select(pattern, drop_scores, active - n_drop, eligible=old)
        if not n_grow:
            return keep
        return keep | topk_mask(grow_scores(), n_grow, eligible=~keep)
    if pattern.kind == "nm":
        if n_grow != n_drop:
            raise ValueError(f"N:M drop/grow must regrow what it drops ({n_drop} vs {n_grow})")
        keep = topk_mask(drop_scores, active - n_drop, eligible=old)
        deficit = _groups(old, pattern.m).sum(1) - _groups(keep, pattern.m).sum(1)
        grown = group_top(_groups(grow_scores(), pattern.m), deficit, _groups(~keep, pattern.m))
        return keep | grown.view_as(old)
    _, size = pattern.units(old.shape)
    old_u = pool_all(pattern, old)
    keep_u = topk_mask(pool(pattern, drop_scores), int(old_u.sum()) - n_drop // size, eligible=old_u)
    if n_grow // size:
        keep_u = keep_u | topk_mask(pool(pattern, grow_scores()), n_grow // size, eligible=~keep_u)
    return expand(pattern, keep_u, old.shape)


def random_mask(pattern: Pattern, shape: Sequence[int], k: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random mask of ``k`` entries in whole units (scores drawn on the CPU)."""
    return select(pattern, torch.rand(tuple(shape), generator=generator), k)


def conforms(pattern: Pattern, mask: torch.Tensor) -> bool:
    """Whether ``mask`` is made of whole units of ``pattern`` (N:M: every group has the same count)."""
    if pattern.kind == "unstructured":
        return True
    if pattern.kind == "nm":
        per = _groups(mask, pattern.m).sum(1)
        return bool((per == per[0]).all()) if per.numel() else True
    return bool(torch.equal(expand(pattern, pool_all(pattern, mask), mask.shape), mask.bool()))
