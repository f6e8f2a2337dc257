"""Layer-wise sparsity distributions (RigL paper §3 and REFERENCE §2.3) as pure functions.

Every distribution maps ``shapes`` (ordered ``{name: weight shape}``) and a global target
``sparsity`` to ``{name: density}``. ``dense`` names layers forced to density 1 and ``custom``
maps names to a fixed density; both are excluded from the budget (they neither consume nor
donate parameters), which is the convention of the official RigL code.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

from ..errors import ConfigError
from ..registry import DISTRIBUTIONS
from .masks import Target, find_targets
from .patterns import UNSTRUCTURED, Pattern, resolve
from .topk import count_zeros

Shapes = Mapping[str, Tuple[int, ...]]
Densities = Dict[str, float]


def _check(shapes: Shapes, sparsity: float, dense: Iterable[str], custom: Mapping[str, float]) -> None:
    if not shapes:
        raise ConfigError("no sparsifiable layers: check include/exclude patterns or the model")
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity}; e.g. 0.9 keeps 10% of weights")
    unknown = sorted((set(dense) | set(custom)) - set(shapes))
    if unknown:
        raise ConfigError(
            f"unknown layer name(s) {unknown}; sparsifiable layers are: {', '.join(shapes)}"
        )
    for name, d in custom.items():
        if not 0.0 <= d <= 1.0:
            raise ConfigError(f"custom density for '{name}' must be in [0, 1], got {d}")


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


@DISTRIBUTIONS.register("uniform")
def uniform(shapes: Shapes, sparsity: float, *, dense: Iterable[str] = (),
            custom: Optional[Mapping[str, float]] = None) -> Densities:
    """Same sparsity in every layer not forced dense (first-layer rule is applied by the caller)."""
    custom = dict(custom or {})
    dense = set(dense)
    _check(shapes, sparsity, dense, custom)
    return {n: custom.get(n, 1.0 if n in dense else 1.0 - sparsity) for n in shapes}


def _er_score(shape: Sequence[int], kernel: bool) -> float:
    """ERK: sum(shape)/prod(shape); ER: the two channel dims only (PyTorch layout: shape[:2])."""
    dims = tuple(shape) if kernel else tuple(shape[:2])
    return sum(dims) / _numel(dims)


def _scaled(shapes: Shapes, sparsity: float, dense: Iterable[str], custom: Mapping[str, float],
            score: Callable[[Sequence[int]], float]) -> Densities:
    """ε-scaling with the capacity rule: layers whose density would exceed 1 become dense.

    Budget: Σ_free ε·r_l·N_l = Σ_free (N_l − z_l) − Σ_dense z_l with z_l = floor(S·N_l); every
    layer tied at the largest raw score moves to the dense set at once, then ε is recomputed.
    """
    custom = dict(custom or {})
    forced = set(dense)
    _check(shapes, sparsity, forced, custom)
    # forced-dense layers sit outside the budget like custom ones (official code: a custom-map
    # entry of sparsity 0); only layers made dense by the capacity rule below consume it
    raw = {n: score(s) for n, s in shapes.items() if n not in custom and n not in forced}
    dense_set: set = set()
    while True:
        free = [n for n in raw if n not in dense_set]
        if not free:
            break
        rhs = sum(_numel(shapes[n]) - count_zeros(_numel(shapes[n]), sparsity) for n in free)
        rhs -= sum(count_zeros(_numel(shapes[n]), sparsity) for n in dense_set)
        eps = rhs / sum(raw[n] * _numel(shapes[n]) for n in free)
        top = max(raw[n] for n in free)
        if eps * top <= 1.0:
            break
        dense_set |= {n for n in free if raw[n] == top}
    out: Densities = {}
    for n in shapes:
        if n in custom:
            out[n] = custom[n]
        elif n in forced or n in dense_set:
            out[n] = 1.0
        else:
            out[n] = max(0.0, eps * raw[n])
    return out


@DISTRIBUTIONS.register("erk")
def erdos_renyi_kernel(shapes: Shapes, sparsity: float, *, dense: Iterable[str] = (),
                       custom: Optional[Mapping[str, float]] = None, power: float = 1.0) -> Densities:
    """Erdős–Rényi-Kernel (Evci et al. 2020): density ∝ (Σ dims / Π dims)^power.

    ``power`` < 1 softens the allocation (0 gives uniform over the non-dense layers).
    """
    return _scaled(shapes, sparsity, dense, custom or {}, lambda s: _er_score(s, True) ** power)


@DISTRIBUTIONS.register("er")
def erdos_renyi(shapes: Shapes, sparsity: float, *, dense: Iterable[str] = (),
                custom: Optional[Mapping[str, float]] = None, power: float = 1.0) -> Densities:
    """Erdős–Rényi (Mocanu et al. 2018): density ∝ ((n_in + n_out)/(n_in·n_out))^power."""
    return _scaled(shapes, sparsity, dense, custom or {}, lambda s: _er_score(s, False) ** power)


@DISTRIBUTIONS.register("custom")
def custom_map(shapes: Shapes, sparsity: float, *, dense: Iterable[str] = (),
               custom: Optional[Mapping[str, float]] = None) -> Densities:
    """Explicit per-layer densities; unlisted layers get the global ``1 - sparsity``."""
    return uniform(shapes, sparsity, dense=dense, custom=custom)


def layer_densities(name: str, shapes: Shapes, sparsity: float, **kwargs) -> Densities:
    """Look up distribution ``name`` in the registry and apply it. A keyword the distribution
    does not take (a misspelling, or ``power`` for uniform) is a ConfigError, never ignored."""
    fn = DISTRIBUTIONS.get(name)
    params = inspect.signature(fn).parameters
    unknown = sorted(k for k in kwargs if k not in params or k in ("shapes", "sparsity"))
    if unknown:
        valid = [k for k in params if k not in ("shapes", "sparsity")]
        raise ConfigError(f"distribution '{name}' takes no option(s) {unknown}; it takes: {', '.join(valid)}")
    return fn(shapes, sparsity, **kwargs)


@dataclass(frozen=True)
class DensityPlan:
    """Where a run starts: which tensors are sparsified, which stay dense by the first/last-layer
    rule, and each sparsified tensor's exact active count (``count_active`` of its density).

    ``densities`` are the distribution's values; ``counts`` are what a mask really holds, and
    ``exact_densities()`` their ratios (what FLOPs and Small-Dense use)."""

    targets: Tuple[Target, ...]
    kept_dense: Tuple[Target, ...]
    densities: Dict[str, float]
    counts: Dict[str, int]
    dense_first: bool
    dense_last: bool
    patterns: Dict[str, Pattern] = None  # type: ignore[assignment]  (None: every layer unstructured)

    def pattern(self, name: str) -> Pattern:
        return (self.patterns or {}).get(name, UNSTRUCTURED)

    def exact_densities(self) -> Dict[str, float]:
        return {t.name: self.counts[t.name] / t.param.numel() for t in self.targets}

    def zeros(self) -> int:
        """Weights the plan removes (sum over sparsified tensors of numel − count)."""
        return sum(t.param.numel() - self.counts[t.name] for t in self.targets)


def default_dense_first(distribution: str) -> bool:
    """The paper's rule: Uniform keeps the first layer dense; ER/ERK/custom do not."""
    return str(distribution).lower() == "uniform"


def plan_densities(model, sparsity: float, distribution: str = "erk", *, dense_first: Optional[bool] = None,
                   dense_last: bool = False, include: Optional[Sequence[str]] = None,
                   exclude: Optional[Sequence[str]] = None, custom: Optional[Mapping[str, float]] = None,
                   erk_power: float = 1.0, pattern: str = "unstructured",
                   pattern_overrides: Optional[Mapping[str, str]] = None,
                   logical: Sequence[Target] = ()) -> DensityPlan:
    """The one home of "targets -> per-layer densities -> exact counts" (engine, ``flops``, Small-Dense).

    Works on a model on the meta device (only shapes are read). ``dense_first`` None applies
    :func:`default_dense_first`. ``erk_power`` is passed to distributions that take a power
    (ER/ERK); a value other than 1 for one that does not is a ConfigError.

    ``pattern`` (default for every sparsified layer) and ``pattern_overrides`` ({fnmatch over
    weight names: pattern}) give each layer its sparsity pattern (:mod:`.patterns`). An N:M layer
    has density N/M whatever the distribution: it leaves the budget like a ``custom`` layer, and
    when every sparsified layer is N:M, ``sparsity`` must equal the sparsity they fix. Block and
    channel layers keep the distribution's density rounded down to whole blocks/channels.

    ``logical``: shape-only targets of the layers ``model`` already holds compressed (built sparse);
    they are planned in their place like the dense weights they stand for."""
    if dense_first is None:
        dense_first = default_dense_first(distribution)
    targets, kept = find_targets(model, include=list(include or ()) or None, exclude=list(exclude or ()) or None,
                                 dense_first=dense_first, dense_last=dense_last, logical=logical)
    patterns = resolve({t.name: t.shape for t in targets}, pattern, pattern_overrides)
    custom = _nm_custom(targets, patterns, sparsity, dict(custom or {}))
    kwargs: Dict[str, object] = {"custom": custom}
    if "power" in inspect.signature(DISTRIBUTIONS.get(distribution)).parameters:
        kwargs["power"] = erk_power
    elif erk_power != 1.0:
        raise ConfigError(f"erk_power applies to the er/erk distributions, not '{distribution}'; remove it")
    dens = layer_densities(distribution, {t.name: t.shape for t in targets}, sparsity, **kwargs)
    counts = {t.name: patterns[t.name].count(t.shape, dens[t.name]) for t in targets}
    return DensityPlan(tuple(targets), tuple(kept), dens, counts, dense_first, dense_last, patterns)


def _nm_custom(targets: Sequence[Target], patterns: Mapping[str, Pattern], sparsity: float,
               custom: Dict[str, float]) -> Dict[str, float]:
    """``custom`` plus density N/M for every N:M layer; a clash with the user's value, or a global
    sparsity other than the one all-N:M layers fix, is a ConfigError naming the value to use."""
    nm = {t.name: patterns[t.name].n / patterns[t.name].m for t in targets if patterns[t.name].kind == "nm"}
    for name, d in nm.items():
        if name in custom and abs(custom[name] - d) > 1e-9:
            raise ConfigError(f"'{name}' has pattern {patterns[name]} (density {d:g}); remove its custom density "
                              f"{custom[name]:g} from sparsity.custom")
    if nm and len(nm) == len(targets):
        total = sum(t.param.numel() for t in targets)
        fixed = 1.0 - sum(nm[t.name] * t.param.numel() for t in targets) / total
        if abs(fixed - sparsity) > 1e-6:
            raise ConfigError(f"pattern {patterns[targets[0].name]} fixes the sparsity of the sparsified layers at "
                              f"{fixed:.6g}; set sparsity.sparsity={fixed:.6g} (got {sparsity:g})")
    return {**custom, **nm}
