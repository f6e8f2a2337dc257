"""Shared pieces of the pruning methods: exact-count selection and pruning at initialisation.

Selection keeps the highest scores, either per layer with the counts of the chosen layer-wise
distribution (``scope="layer"``) or network-wide with the same total count (``scope="global"``,
one threshold over all sparsified layers). Counts are exact; ties go to the lower flat index,
earlier layers first (``topk.topk_mask``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Sequence

import torch

from ...errors import ConfigError
from ..patterns import Pattern, refuse_structured, select as pattern_select
from ..topk import topk_mask
from ..run import Phase, RunContext, RunHooks, cpu_copy, save_ticket, task_loss
from .base import Method

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import SparsityEngine

log = logging.getLogger(__name__)

SCOPES = ("layer", "global")
Masks = Dict[str, torch.Tensor]


def check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ConfigError(f"scope must be 'layer' (each layer keeps its distribution count) or "
                          f"'global' (one threshold over all layers), got '{scope}'")


def check_scope_patterns(scope: str, patterns: Mapping[str, Pattern], method: str) -> None:
    """One threshold over all layers (``global``) cannot keep whole units per layer: refuse it
    with a structured pattern."""
    if scope == "global":
        refuse_structured(patterns, f"{method} with scope=global", "set sparsity.options.scope=layer")


def all_ones(engine: "SparsityEngine") -> Masks:
    """Dense masks for every target (dense-to-sparse methods start here)."""
    return {t.name: torch.ones_like(t.param, dtype=torch.bool) for t in engine.targets}


def layer_counts(engine: "SparsityEngine", power: float = 1.0) -> Dict[str, int]:
    """Active weights per layer at the engine's distribution densities, raised to ``power``
    (d**power: a fraction of the way along an exponential schedule), in whole units of each
    layer's pattern (:meth:`patterns.Pattern.count`)."""
    return {t.name: engine.pattern(t.name).count(t.shape, engine.densities[t.name] ** power) for t in engine.targets}


def select(scores: Mapping[str, torch.Tensor], counts: Mapping[str, int], scope: str,
           eligible: Optional[Mapping[str, torch.Tensor]] = None, total: Optional[int] = None,
           generator: Optional[torch.Generator] = None, patterns: Optional[Mapping[str, Pattern]] = None) -> Masks:
    """Masks keeping the highest ``scores``: ``counts[name]`` per layer (``layer``) or, network-wide
    (``global``), ``total`` (default: the sum of ``counts``); among ``eligible`` entries when given.

    Ties go to the lower index unless ``generator`` is given, then to a random one: scores clipped
    to a bound (Gem-Miner's [0, 1]) tie in bulk, and a global index rule would favour early layers.
    ``patterns`` ({name: pattern}, layer scope): each layer keeps whole units of its pattern.
    """
    check_scope(scope)
    names = list(scores)
    if scope == "layer":
        pats = patterns or {}
        return {n: pattern_select(pats[n], scores[n], counts[n], None if eligible is None else eligible[n])
                if n in pats else topk_mask(scores[n], counts[n], None if eligible is None else eligible[n])
                for n in names}
    flat = torch.cat([scores[n].detach().reshape(-1).float() for n in names])
    elig = None if eligible is None else torch.cat([eligible[n].reshape(-1) for n in names])
    k = sum(int(counts[n]) for n in names) if total is None else int(total)
    if generator is None:
        keep = topk_mask(flat, k, elig)
    else:  # rank in a random order, so the index tie rule is a random one
        perm = torch.randperm(flat.numel(), generator=generator).to(flat.device)
        keep = torch.empty_like(flat, dtype=torch.bool)
        keep[perm] = topk_mask(flat[perm], k, None if elig is None else elig[perm])
    out, at = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = keep[at:at + size].view_as(scores[n])
        at += size
    return out


def sparsities(masks: Mapping[str, torch.Tensor]) -> Dict[str, float]:
    """Fraction of zeros per layer."""
    return {n: 1.0 - float(m.sum()) / m.numel() for n, m in masks.items()}


@dataclass(frozen=True)
class PruneAtInitOptions:
    """``scope``: ``layer`` keeps each layer's distribution count, ``global`` one threshold."""

    scope: str = "layer"


class PruneAtInit(RunHooks, Method):
    """Prune once before training from a saliency score (SNIP, GraSP, SynFlow).

    A run calls :meth:`prune_at_init` with the first training batch before step 0 (a phase
    ``begin`` hook); outside a run call it yourself. Subclasses implement :meth:`scores`
    (higher = keep). The layer-wise sparsities found are logged and reported in summary.json.
    """

    Options = PruneAtInitOptions
    starts_dense = True
    needs_data = True  # SynFlow sets False: it scores an all-ones input

    def validate(self) -> None:
        check_scope(self.options.scope)

    def check_patterns(self, patterns: Mapping[str, Pattern]) -> None:
        check_scope_patterns(self.options.scope, patterns, self.name)

    def setup(self, engine: "SparsityEngine") -> None:
        self.found: Optional[Dict[str, float]] = None
        self.seconds = 0.0
        self.last_scores: Optional[Masks] = None

    def init_masks(self, engine: "SparsityEngine") -> Masks:
        return all_ones(engine)

    def scores(self, engine: "SparsityEngine", batch, loss_fn: Callable, input_shape: Optional[Sequence[int]],
               input_dtype: Optional[torch.dtype]) -> Masks:
        """{layer: saliency}, higher kept."""
        raise NotImplementedError

    def prune_at_init(self, engine: "SparsityEngine", batch=None, loss_fn: Optional[Callable] = None,
                      input_shape: Optional[Sequence[int]] = None,
                      input_dtype: Optional[torch.dtype] = None) -> Dict[str, float]:
        """Score, keep the exact counts, install the masks; returns the layer sparsities found."""
        if self.needs_data and batch is None:
            raise ConfigError(f"{self.name} scores weights on a batch of data; pass batch=(x, y)")
        start = time.perf_counter()
        scores = self.scores(engine, batch, loss_fn or task_loss, input_shape, input_dtype)
        masks = self.select(engine, scores)
        engine.set_masks(masks, reason=self.name)
        self.seconds = time.perf_counter() - start
        self.found, self.last_scores = sparsities(masks), scores
        log.info("%s: layer sparsities %s (%.2fs)", self.name,
                 {n: round(v, 4) for n, v in self.found.items()}, self.seconds)
        return dict(self.found)

    def select(self, engine: "SparsityEngine", scores: Masks) -> Masks:
        return select(scores, layer_counts(engine), self.options.scope, patterns=engine.patterns)

    def phases(self, run: RunContext) -> List[Phase]:
        return [Phase("train", run.total_steps, reset_optimizer=False, begin=self._prune_begin)]

    def _prune_begin(self, run: RunContext) -> None:
        """Phase ``begin``: prune from the batch of step 0 (or the input shape), write the ticket."""
        batch = run.first_batch() if self.needs_data else None
        init = cpu_copy(run.model.state_dict())  # before the mask zeroes the pruned weights
        self.prune_at_init(run.engine, batch, run.loss_fn, run.info.input_shape,
                           torch.long if run.info.task == "lm" else None)
        save_ticket(run, self.last_scores, init)

    def ticket_step(self, engine: Optional["SparsityEngine"]) -> Optional[int]:
        return None if self.found is None else 0

    def report(self) -> dict:
        return {"prune_at_init": {"layer_sparsity": self.found, "seconds": self.seconds,
                                  "scope": self.options.scope}}

    def state_dict(self) -> dict:
        return {"found": self.found, "seconds": self.seconds}

    def load_state_dict(self, state: dict) -> None:
        self.found, self.seconds = state.get("found"), float(state.get("seconds", 0.0))
