"""Method base classes: the small hooks every sparse-training method overrides.

A method owns its hyper-parameters (a frozen ``Options`` dataclass) and answers the engine's
questions: the initial masks, whether ``step`` updates the topology, how many weights each layer
drops and grows, and the drop/grow scores. The engine does the bookkeeping (exact counts,
zero-init, optimizer-state reset, distributed sync), so a method file stays short. Run-level
hooks (phases, time-to-ticket, extra metrics and report) are an opt-in mixin,
:class:`sparsetrain.sparsity.run.RunHooks`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Mapping, Optional, Tuple

import torch

from ...errors import ConfigError
from ...flops import training_flops_snfs, training_flops_static
from ..masks import random_masks
from ..patterns import Pattern, refuse_structured
from ..run import RunHooks
from ..schedules import DECAYS, UpdateSchedule, drop_fraction
from ..topk import count_zeros
from .redistribution import REDISTRIBUTIONS, apportion, layer_statistic

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import SparsityEngine


def build_options(cls, method: str, options: Mapping[str, object]):
    """Instantiate ``cls`` (a dataclass) from ``options``, each value coerced to its field's type
    by the config's own coercion (:func:`sparsetrain.config.coerce_fields`, so ``"100"`` and
    ``100.0`` give ``100`` while ``"abc"`` and ``1.5`` for an int are ConfigErrors naming
    ``sparsity.options.<name>``); unknown keys are a ConfigError naming the valid ones."""
    from ...config import coerce_fields

    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for method '{method}'; valid: {', '.join(sorted(valid)) or 'none'}")
    return cls(**coerce_fields(cls, options, "sparsity.options."))


class Method:
    """Static sparse training: an exact-count random mask that never changes.

    Base of all methods. Reference: the 'Static' baseline of Evci et al., "Rigging the Lottery:
    Making All Tickets Winners", ICML 2020.
    """

    name = "base"
    #: the method trains with masks; False (dense baselines): the run attaches no engine
    uses_masks: bool = True
    #: masks start all-ones and are pruned later (GMP, SNIP, IMP, ...): no "denser than asked" warning
    starts_dense: bool = False
    #: pruning at initialisation scores a batch of training data (SNIP, GraSP; not SynFlow)
    needs_data: bool = False
    #: keeps a moving average of dense gradients, so it reads them every step (SNFS)
    tracks_momentum: bool = False
    #: tested step for step on compressed layer stores (the truly sparse backend) against
    #: masked-dense ones; a run config may select ``sparsity.backend=sparse`` only for such methods
    runs_on_compressed: bool = False

    @dataclass(frozen=True)
    class Options:
        pass

    def __init__(self, **options):
        self.options = build_options(self.Options, self.name, options)
        self.validate()

    def validate(self) -> None:
        """Check option values; raise ConfigError naming the fix."""

    @classmethod
    def starts_from_random_masks(cls) -> bool:
        """Whether the method's initial masks are exact-count random ones (this class's
        :meth:`init_masks`), the masks a model built sparse already holds."""
        return not cls.starts_dense and cls.init_masks is Method.init_masks

    # --- life cycle -------------------------------------------------------------------------
    def setup(self, engine: "SparsityEngine") -> None:
        """Resolve step-anchored options once ``engine.total_steps`` is known."""

    def check_patterns(self, patterns: Mapping[str, Pattern]) -> None:
        """ConfigError if the method cannot keep some layer's sparsity pattern (:mod:`..patterns`);
        ``patterns``: {weight name: pattern}. Default: every pattern works (the engine's selection
        is pattern-aware)."""

    def init_masks(self, engine: "SparsityEngine") -> Dict[str, torch.Tensor]:
        return random_masks(engine.targets, engine.densities, engine.generator, engine.patterns)

    @property
    def skip_optimizer_step(self) -> bool:
        return False

    def is_update_step(self, step: int) -> bool:
        return False

    def observe_gradients(self, engine: "SparsityEngine", update: bool) -> None:
        """Read the dense gradients (after backward, before they are masked)."""

    # --- topology update --------------------------------------------------------------------
    def drop_fraction(self, step: int) -> float:
        return 0.0

    def allocate(self, engine: "SparsityEngine", fraction: float) -> Dict[str, Tuple[int, int]]:
        """(n_drop, n_grow) per layer. The topology of a static method never changes, so an
        explicit ``engine.update_masks(f)`` is a no-op rather than an error."""
        return {t.name: (0, 0) for t in engine.targets}

    def drop_scores(self, engine: "SparsityEngine", name: str) -> torch.Tensor:
        """Scores of active weights; the lowest are dropped. Default: |w|."""
        return engine.param(name).detach().abs()

    def grow_scores(self, engine: "SparsityEngine", name: str) -> torch.Tensor:
        """Scores of candidate (inactive) positions; the highest are grown."""
        raise NotImplementedError

    def grow_scores_rows(self, engine: "SparsityEngine", name: str, rows: slice, n_cols: int) -> torch.Tensor:
        """Rows ``rows`` of :meth:`grow_scores` with the weight viewed as a matrix (dim 0 × ``n_cols``).

        A compressed layer is scored through this hook only, block by block in increasing row
        order, so a method that computes blocks directly (SET, RigL, SNFS) never holds a dense
        score matrix. This default serves methods that define whole-layer scores only: it calls
        :meth:`grow_scores` once per layer, at the block starting at row 0, and slices it. The
        rule is explicit: a class that overrides ``grow_scores`` without overriding this hook gets
        this default back, never a parent's row hook scoring something else (``__init_subclass__``).
        """
        cached = getattr(self, "_whole_grow_scores", None)
        if rows.start == 0 or cached is None or cached[0] != name:
            s = self.grow_scores(engine, name)
            cached = (name, s.reshape(s.shape[0], -1))
        self._whole_grow_scores = None if rows.stop >= cached[1].shape[0] else cached  # kept until the last block
        return cached[1][rows]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "grow_scores" in vars(cls) and "grow_scores_rows" not in vars(cls):
            cls.grow_scores_rows = Method.grow_scores_rows

    def finish_update(self, engine: "SparsityEngine") -> None:
        """Release anything captured for the update."""

    # --- cost (Evci et al. 2020, App. H) ------------------------------------------------------
    def training_flops(self, f_s: float, f_d: float) -> float:
        """Training FLOPs per example per step, averaged over the run, from the sparse (f_S)
        and dense (f_D) forward FLOPs per example. Default: forward and both backward passes
        sparse, 3·f_S (Static, SET, SNIP, Small-Dense). Extended training (×M) is applied by
        the caller; a method whose f_S changes over training states its own average."""
        return training_flops_static(f_s)

    def uses_dense_grad(self, step: int) -> bool:
        """Whether step ``step`` computes the dense weight gradient (f_D instead of f_S for
        the weight-gradient pass); read by :class:`sparsetrain.flops.FlopsTracker` callers."""
        return False

    # --- persistence ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def describe(self) -> dict:
        return {"method": self.name, **dataclasses.asdict(self.options)}


@dataclass(frozen=True)
class DynamicOptions:
    """Topology-update schedule shared by SET, RigL and SNFS (RigL paper defaults)."""

    delta_t: int = 100
    start: Optional[int] = None
    end: Optional[int] = None
    end_fraction: float = 0.75
    alpha: float = 0.3
    decay: str = "cosine"
    skip_optimizer_step: bool = False
    redistribution: str = "none"
    momentum: float = 0.9
    grow_init: str = "zeros"


class DynamicMethod(RunHooks, Method):
    """Drop the smallest-magnitude active weights every ΔT steps and grow as many elsewhere.

    Subclasses choose the grow score. With ``redistribution`` != "none" the per-layer counts
    follow a layer statistic (Dettmers & Zettlemoyer 2019, "Sparse Networks from Scratch"),
    so only the global count is preserved.
    """

    Options = DynamicOptions
    #: the gradient average is an EMA, (1 − β)·g per step (False: β·m + g, SGD's buffer rule)
    dampened_momentum: bool = True

    def validate(self) -> None:
        o = self.options
        if not 0.0 <= o.alpha <= 1.0:
            raise ConfigError(f"alpha (drop fraction) must be in [0, 1], got {o.alpha}")
        if o.decay not in DECAYS:
            raise ConfigError(f"unknown decay '{o.decay}'; choose one of: {', '.join(DECAYS)}")
        if o.redistribution not in REDISTRIBUTIONS:
            raise ConfigError(f"unknown redistribution '{o.redistribution}'; choose one of: {', '.join(REDISTRIBUTIONS)}")
        if not 0.0 <= o.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {o.momentum}")
        if o.grow_init != "zeros":
            raise ConfigError(f"grow_init '{o.grow_init}' is not supported; use 'zeros' (the paper's choice)")

    def check_patterns(self, patterns: Mapping[str, Pattern]) -> None:
        if self.options.redistribution != "none":
            refuse_structured(patterns, f"{self.name} with redistribution '{self.options.redistribution}'",
                              "set sparsity.options.redistribution=none")

    def setup(self, engine: "SparsityEngine") -> None:
        o = self.options
        self.schedule = UpdateSchedule.build(engine.total_steps, o.delta_t, o.start, o.end, o.end_fraction)
        self.ema: Dict[str, torch.Tensor] = {}

    @property
    def tracks_momentum(self) -> bool:
        return self.options.redistribution == "momentum"

    @property
    def skip_optimizer_step(self) -> bool:
        return self.options.skip_optimizer_step

    def is_update_step(self, step: int) -> bool:
        return self.schedule.is_update(step)

    def drop_fraction(self, step: int) -> float:
        return drop_fraction(step, self.options.alpha, self.schedule.end, self.options.decay)

    def observe_gradients(self, engine: "SparsityEngine", update: bool) -> None:
        if self.tracks_momentum:
            self._update_ema(engine)

    def training_flops(self, f_s: float, f_d: float) -> float:
        # a momentum of dense gradients needs the dense weight gradient every step (SNFS)
        return training_flops_snfs(f_s, f_d) if self.tracks_momentum else training_flops_static(f_s)

    def uses_dense_grad(self, step: int) -> bool:
        return self.tracks_momentum

    def ticket_step(self, engine: Optional["SparsityEngine"]) -> Optional[int]:
        # the topology is final once the last update step (the last start + k·ΔT < T_end) is done
        s = self.schedule
        if s.end <= s.start:
            return 0
        return s.start + (s.end - 1 - s.start) // s.delta_t * s.delta_t + 1

    @torch.no_grad()
    def _update_ema(self, engine: "SparsityEngine") -> None:
        """EMA of dense gradients, m ← β·m + (1 − β)·g (the official RigL 'momentum' grow); with
        ``dampened_momentum`` False, m ← β·m + g (SGD's momentum-buffer rule)."""
        beta = self.options.momentum
        weight = 1 - beta if self.dampened_momentum else 1.0
        for t in engine.targets:
            g = engine.dense_grad(t.name)
            m = self.ema.get(t.name)
            self.ema[t.name] = g.clone() if m is None else m.mul_(beta).add_(g, alpha=weight)

    def allocate(self, engine: "SparsityEngine", fraction: float) -> Dict[str, Tuple[int, int]]:
        """floor(f·n_active) dropped and as many grown per layer, so every layer keeps its count
        (count_zeros' rounding makes e.g. 0.29·100 drop 29, not 28); with redistribution the
        grown counts follow the layer statistic and only the global count is kept."""
        base = {}
        for t in engine.targets:
            k = count_zeros(int(engine.masks[t.name].sum()), fraction)
            base[t.name] = (k, k)
        if self.options.redistribution == "none":
            return base
        stats = {t.name: self._layer_statistic(engine, t.name) for t in engine.targets}
        removed = {n: d for n, (d, _) in base.items()}
        capacity = {t.name: t.param.numel() - int(engine.masks[t.name].sum()) + removed[t.name]
                    for t in engine.targets}
        grown = apportion(stats, sum(removed.values()), capacity, fallback=removed)
        return {n: (removed[n], grown[n]) for n in removed}

    def _layer_statistic(self, engine: "SparsityEngine", name: str) -> float:
        # active entries only: a compressed layer's weight is its values vector, its mask CSR
        ema = self.ema.get(name)
        return layer_statistic(self.options.redistribution, engine.active_values(name),
                               None if ema is None else engine.active_values(name, ema))

    def state_dict(self) -> dict:
        return {"ema": {k: v.clone() for k, v in self.ema.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.ema = {k: v.clone() for k, v in state.get("ema", {}).items()}
