"""IMP: iterative magnitude pruning with rewinding (the lottery-ticket procedure).

Frankle & Carbin, "The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural Networks",
ICLR 2019; rewinding to an early iteration k from Frankle, Dziugaite, Roy & Carbin, "Linear Mode
Connectivity and the Lottery Ticket Hypothesis", ICML 2020 (as in open_lth and the Gem-Miner
code). Round 0 trains the dense network; each later round first removes ``prune_fraction`` of
the remaining weights by smallest |w| of the trained weights (``global``: one threshold over
all sparsified layers, open_lth's default; ``layer``: per layer), rewinds every parameter and
buffer to the rewind point (init, or step k of round 0), resets the optimizer and LR schedule and
trains again for the configured length. Level k keeps ceil-rounded 0.8^k of the weights; the last
level stops exactly at the target count of the configured sparsity and distribution.

Every round's density and accuracy go to ``rounds.jsonl`` and its mask to
``masks/round_<r>.pt`` in the run directory; the checkpoint records the round (phase).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Union

import torch

from ...errors import ConfigError
from ...registry import METHODS
from ..run import Callback, Phase, RunContext, RunHooks, save_ticket, to_bytes
from .base import Method
from ..patterns import Pattern
from .pruning import all_ones, check_scope, check_scope_patterns, layer_counts, select

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import SparsityEngine

log = logging.getLogger(__name__)


def level_counts(n: int, fraction: float, floor: int, levels: Optional[int] = None) -> List[int]:
    """Active counts at levels 0, 1, ...: each level removes ceil(fraction · remaining) (open_lth's
    rule) but never goes below ``floor``; with ``levels`` None, as many levels as reach ``floor``."""
    counts = [int(n)]
    while (levels is None and counts[-1] > floor) or (levels is not None and len(counts) <= levels):
        c = counts[-1]
        counts.append(max(int(floor), c - math.ceil(round(fraction * c, 9))))
        if levels is None and counts[-1] == c:  # fraction too small to make progress
            break
    return counts


def magnitude_prune(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                    keep: Union[int, Mapping[str, int]], scope: str = "global",
                    patterns: Optional[Mapping[str, Pattern]] = None) -> Dict[str, torch.Tensor]:
    """New masks keeping the largest |w| among the currently active weights: ``keep`` in total
    (``global``, an int) or per layer (``layer``, a {name: count} map, in whole units of each
    layer's ``patterns`` entry). Pruned weights stay pruned."""
    scores = {n: w.detach().abs() for n, w in weights.items()}
    if scope == "global":
        return select(scores, {n: 0 for n in scores}, "global", eligible=masks, total=int(keep))
    return select(scores, dict(keep), "layer", eligible=masks, patterns=patterns)


@dataclass(frozen=True)
class IMPOptions:
    """``prune_fraction`` of the remaining weights per round (0.2); ``levels``: pruning rounds
    (default: enough to reach the configured sparsity); ``scope``: ``global`` or ``layer``;
    ``rewind_step``: step of round 0 whose weights every later round restarts from (0 = init)."""

    prune_fraction: float = 0.2
    levels: Optional[int] = None
    scope: str = "global"
    rewind_step: int = 0


@METHODS.register("imp")
class IMP(RunHooks, Method):
    """Iterative magnitude pruning with weight rewinding (Frankle & Carbin 2019; Frankle et al. 2020)."""

    name = "imp"
    Options = IMPOptions
    starts_dense = True

    def validate(self) -> None:
        o = self.options
        check_scope(o.scope)
        if not 0.0 < o.prune_fraction < 1.0:
            raise ConfigError(f"prune_fraction must be in (0, 1), got {o.prune_fraction}")
        if o.levels is not None and int(o.levels) < 1:
            raise ConfigError(f"levels must be >= 1 (or null for automatic), got {o.levels}")
        if int(o.rewind_step) < 0:
            raise ConfigError(f"rewind_step must be >= 0, got {o.rewind_step}")

    def check_patterns(self, patterns: Mapping[str, Pattern]) -> None:
        check_scope_patterns(self.options.scope, patterns, self.name)

    def setup(self, engine: "SparsityEngine") -> None:
        o, floor = self.options, layer_counts(engine)
        sizes = {t.name: t.param.numel() for t in engine.targets}
        if o.scope == "global":
            self.plan = level_counts(sum(sizes.values()), o.prune_fraction, sum(floor.values()), o.levels)
        else:  # in whole units of each layer's pattern (N:M: per-group counts from M down to N)
            per = {}
            for t in engine.targets:
                n_units, size = engine.pattern(t.name).units(t.shape)
                per[t.name] = [size * c for c in level_counts(n_units, o.prune_fraction, floor[t.name] // size, o.levels)]
            n_levels = max(len(c) for c in per.values())
            self.plan = [{n: c[min(k, len(c) - 1)] for n, c in per.items()} for k in range(n_levels)]
        if o.levels is not None:
            last = self.plan[-1] if o.scope == "global" else sum(self.plan[-1].values())
            if last > sum(floor.values()):
                log.warning("imp: %d levels stop at %d active weights, above the target %d; raise levels",
                            o.levels, last, sum(floor.values()))
        self.rounds: Dict[int, dict] = {}
        self.rewind: Optional[Dict[str, torch.Tensor]] = None
        self.ticket_at: Optional[int] = None

    def init_masks(self, engine: "SparsityEngine") -> Dict[str, torch.Tensor]:
        return all_ones(engine)

    @property
    def levels(self) -> int:
        return len(self.plan) - 1

    # --- phases -----------------------------------------------------------------------------
    def phases(self, run: RunContext) -> List[Phase]:
        total, k = run.total_steps, int(self.options.rewind_step)
        if k >= total:
            raise ConfigError(f"rewind_step {k} is not inside round 0 ({total} steps); lower it")
        self.ticket_at = total * self.levels
        out = []
        for r in range(self.levels + 1):
            callbacks = [_Snapshot(self, run, k)] if r == 0 and k > 0 else []
            begin = (self._snapshot if k == 0 else None) if r == 0 else self._next_level(r)
            out.append(Phase(f"round{r}", total, begin=begin, end=self._record(r, total), callbacks=callbacks,
                             reset_optimizer=r > 0))
        return out

    def _snapshot(self, run: RunContext) -> None:
        """Keep the rewind point: every parameter and buffer of the model now."""
        self.rewind = {k: v.detach().clone() for k, v in run.model.state_dict().items()}

    def _next_level(self, r: int):
        def begin(run: RunContext) -> None:
            engine = run.engine
            masks = magnitude_prune({t.name: t.param for t in engine.targets}, engine.masks,
                                    self.plan[r], self.options.scope, engine.patterns)
            if self.rewind is None:
                raise ConfigError("imp: no rewind point recorded; the run directory is inconsistent, delete it")
            run.model.load_state_dict(self.rewind)
            engine.set_masks(masks, reason=f"imp level {r}")
            if r == self.levels:
                save_ticket(run, init=self.rewind)
        return begin

    def _record(self, r: int, round_steps: int):
        def end(run: RunContext) -> None:
            rep = run.engine.density_report()
            row = {"round": r, "density": rep["sparsified_density"], "sparsity": 1 - rep["sparsified_density"],
                   "steps": (r + 1) * round_steps, "wall_time_s": run.elapsed()}
            for split, m in run.last_metrics.items():
                row.update({f"{split}_{k}": v for k, v in m.items()})
            self.rounds[r] = row
            _write_rounds(run, self.rounds, r, run.engine.masks)
        return end

    # --- reporting --------------------------------------------------------------------------
    def ticket_step(self, engine: Optional["SparsityEngine"]) -> Optional[int]:
        return self.ticket_at

    def report(self) -> dict:
        return {"imp": {"levels": self.levels, "scope": self.options.scope,
                        "rewind_step": int(self.options.rewind_step),
                        "rounds": [self.rounds[r] for r in sorted(self.rounds)]}}

    def state_dict(self) -> dict:
        return {"rounds": {str(r): v for r, v in self.rounds.items()}, "rewind": self.rewind}

    def load_state_dict(self, state: dict) -> None:
        self.rounds = {int(r): v for r, v in state.get("rounds", {}).items()}
        self.rewind = state.get("rewind")


class _Snapshot(Callback):
    """Round-0 callback: take the rewind point after step ``k`` (Frankle et al. 2020)."""

    def __init__(self, method: IMP, run: RunContext, k: int):
        self.method, self.run, self.k = method, run, k

    def on_step_end(self, s) -> None:
        if s.step == self.k:
            self.method._snapshot(self.run)


def _write_rounds(run: RunContext, rounds: Mapping[int, dict], r: int, masks: Mapping[str, torch.Tensor]) -> None:
    """rounds.jsonl (whole file, so a re-run end hook leaves no duplicate) and this round's mask."""
    if not run.is_main:
        return
    run.save_artifact("rounds.jsonl", "".join(json.dumps(rounds[k]) + "\n" for k in sorted(rounds)))
    run.save_artifact(f"masks/round_{r}.pt", to_bytes({n: m.detach().cpu() for n, m in masks.items()}))
