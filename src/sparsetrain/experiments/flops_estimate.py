"""FLOPs of a run configuration without data or training: per-layer inference FLOPs at the
densities a run starts from, and the method's training FLOPs per example.

The sparsified tensors and their exact counts are the engine's
(:func:`sparsetrain.sparsity.distributions.plan_densities`, the one home of targets → densities →
exact counts). The input shape comes from the dataset registry
(:func:`sparsetrain.data.dataset_info`), so ImageNet-size models are counted with no dataset on
disk. Conventions: :mod:`sparsetrain.flops` and docs/flops.md (Evci et al., "Rigging the Lottery:
Making All Tickets Winners", ICML 2020, App. H).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

from ..config import RunConfig, SparsityConfig
from ..data import dataset_info
from ..flops import FlopsReport, count_flops, relative_to_dense
from ..models import build_model
from ..registry import METHODS
from ..sparsity import methods as _methods  # noqa: F401  (registers the built-in methods)
from ..sparsity.distributions import plan_densities
from ..sparsity.run import adjusted_config
from ..train.flops_meter import input_spec


@dataclass(frozen=True)
class FlopsEstimate:
    """The per-layer counter report, the method object and :func:`flops_summary` of a config."""

    report: FlopsReport
    method: Any
    summary: Dict[str, Any]


def build_method(s: SparsityConfig):
    """The configured method with its (typed, validated) options."""
    return METHODS.get(s.method)(**s.options)


def start_plan(model, method, s: SparsityConfig):
    """The density plan a run of ``s`` starts from (None for engine-less methods)."""
    if not method.uses_masks:
        return None
    return plan_densities(model, s.sparsity, s.distribution, dense_first=s.dense_first, dense_last=s.dense_last,
                          include=s.include, exclude=s.exclude, custom=s.custom, erk_power=s.erk_power,
                          pattern=s.pattern, pattern_overrides=s.pattern_overrides)


def flops_summary(report: FlopsReport, method, multiplier: float, f_d: Optional[float] = None) -> Dict[str, Any]:
    """Totals, inference ratio and training FLOPs per example per step, also as a multiple of
    dense (3·f_D) and of the dense run when trained ``multiplier`` times longer. ``f_d``: the
    configured dense model's forward FLOPs when the counted model differs from it (Small-Dense
    trains a narrower one); default the counted model's own dense cost."""
    f_s, f_d = report.sparse, float(report.dense if f_d is None else f_d)
    train = method.training_flops(f_s, f_d)
    rel = relative_to_dense(train, f_d) if f_d else 1.0
    return {"inference_flops": f_s, "inference_flops_dense": f_d, "inference_flops_ratio": f_s / f_d if f_d else 1.0,
            "train_flops_per_example": train, "train_flops_dense_per_example": 3.0 * f_d,
            "train_flops_ratio": rel, "multiplier": multiplier, "train_flops_ratio_extended": rel * multiplier}


def estimate_flops(cfg: RunConfig) -> FlopsEstimate:
    """Count the model ``cfg`` trains (Small-Dense: the narrowed one) at its starting densities,
    against the configured full-width dense model; ConfigError for an unknown or bad model,
    dataset, method, option or distribution."""
    info = dataset_info(cfg.data.name, **cfg.data.options)
    method = build_method(cfg.sparsity)
    trained = adjusted_config(METHODS.get(cfg.sparsity.method), cfg, info)
    model = _model(trained, info)
    shape, dtype = input_spec(info)
    plan = start_plan(model, method, cfg.sparsity)
    report = count_flops(model, shape, {} if plan is None else plan.exact_densities(), input_dtype=dtype,
                         patterns=None if plan is None else {t.name: str(plan.pattern(t.name)) for t in plan.targets})
    f_d = None if trained.model == cfg.model else float(count_flops(_model(cfg, info), shape, input_dtype=dtype).dense)
    return FlopsEstimate(report, method, flops_summary(report, method, cfg.train.multiplier, f_d))


def _model(cfg: RunConfig, info):
    return build_model(cfg.model.name, info, width=cfg.model.width, **cfg.model.options)
