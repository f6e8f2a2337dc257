"""From a RunConfig to the objects of a run: seed, optimizer, LR schedule, length, engine.

The Trainer (:mod:`.trainer`) wires them into the loop; the run directory is the run store's
(:mod:`sparsetrain.experiments.run_store`).
"""
from __future__ import annotations

import logging
import random
from typing import Optional

import numpy as np
import torch

from ..config import ModelConfig, RunConfig
from ..errors import ConfigError
from ..registry import METHODS
from ..sparsity.engine import SparsityEngine
from .lr import lr_factor

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed torch, Python's ``random`` and NumPy: model init and any user transform are reproducible
    (the checkpoint restores all three on resume)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def build_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or Adam/AdamW; biases and norm parameters (ndim < 2) get no
    weight decay unless ``optim.decay_bias_and_norm``."""
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if o.decay_bias_and_norm:
        groups = [{"params": params, "weight_decay": o.weight_decay}]
    else:
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": o.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=o.lr, betas=tuple(o.betas))


def build_scheduler(optimizer, cfg: RunConfig, total: int, steps_per_epoch: int):
    o, m = cfg.optim, cfg.train.multiplier
    warmup = int(round(o.warmup_epochs * steps_per_epoch * m))
    miles = [int(round(e * steps_per_epoch * m)) for e in o.milestones]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, o.schedule, miles, o.gamma))


def total_steps(cfg: RunConfig, steps_per_epoch: int) -> int:
    base = cfg.train.steps if cfg.train.steps > 0 else int(round(cfg.train.epochs * steps_per_epoch))
    return max(1, int(round(base * cfg.train.multiplier)))


def plan_rules(cfg: RunConfig) -> dict:
    """The rules that plan the per-layer densities (the engine's and ``build_sparse``'s)."""
    s = cfg.sparsity
    return dict(distribution=s.distribution, dense_first=s.dense_first, dense_last=s.dense_last,
                include=list(s.include) or None, exclude=list(s.exclude) or None, custom=s.custom,
                erk_power=s.erk_power)


def _no_sparse_build(cfg: RunConfig, model_cfg: ModelConfig, factory) -> Optional[str]:
    """Why the run's model cannot be built sparse, or None."""
    from ..models import init_rule
    from ..sparsity.storage.build import tied_parameters

    method = METHODS.get(cfg.sparsity.method)
    if not method.starts_from_random_masks():
        return f"method '{method.name}' does not start from random masks"
    if cfg.sparsity.pattern != "unstructured" or cfg.sparsity.pattern_overrides:
        return "structured patterns are trained masked"
    _, why = init_rule(model_cfg.name, model_cfg.options)
    if why:
        return why
    with torch.device("meta"):
        tied = tied_parameters(factory())
    return f"the model ties parameters ({', '.join(tied)})" if tied else None


def build_run_model(cfg: RunConfig, model_cfg: ModelConfig, info, device: torch.device = torch.device("cpu"),
                    world: int = 1) -> tuple:
    """(model, how it was built: "sparse" or "dense"): the run's model on ``device``, built dense, or, for ``sparsity.backend = "sparse"`` with
    ``sparsity.build`` sparse (or auto, where possible), with the layers the storage policy
    compresses created compressed (``build_sparse``: construction memory follows the nonzeros)."""
    from ..models import build_model, init_rule
    from ..sparsity.backend import check_sparse_backend
    from ..sparsity.storage import STORAGES, build_sparse

    s, m = cfg.sparsity, model_cfg
    factory = lambda: build_model(m.name, info, width=m.width, **m.options)  # noqa: E731
    if s.backend != "sparse" or s.build == "dense" or not METHODS.get(s.method).uses_masks:
        return factory().to(device), "dense"
    policy = check_sparse_backend(s.method, device=device, world=world, backend_options=s.backend_options)
    why = _no_sparse_build(cfg, m, factory)
    if why is not None:
        if s.build == "sparse":
            raise ConfigError(f"sparsity.build=sparse: {why}; use sparsity.build=dense")
        log.info("sparse backend: building the model dense, then compressing it (%s)", why)
        return factory().to(device), "dense"
    rule, _ = init_rule(m.name, m.options)
    model = build_sparse(factory, s.sparsity, init=rule, seed=cfg.seed, device=device, policy=policy,
                         **plan_rules(cfg))
    if not any(STORAGES.get(key).adopt(model, policy) for key in STORAGES):
        log.info("sparse backend: the policy compresses no layer of this model, so it was built dense")
        return model, "dense"
    return model, "sparse"


def build_engine(model, optimizer, cfg: RunConfig, total: int, device: torch.device = torch.device("cpu"),
                 world: int = 1) -> Optional[SparsityEngine]:
    """The method's engine, or None for methods that train without masks (dense baselines).
    Method options given in steps (start, end) scale with the training multiplier.
    ``sparsity.backend = "sparse"`` builds the truly sparse CPU engine instead."""
    s = cfg.sparsity
    if not METHODS.get(s.method).uses_masks:
        if s.pattern != "unstructured" or s.pattern_overrides:
            raise ConfigError(f"method '{s.method}' trains without masks; remove sparsity.pattern")
        if s.backend != "masked":
            raise ConfigError(f"method '{s.method}' trains without masks; remove sparsity.backend={s.backend}")
        return None
    opts = dict(s.options)
    for key in ("start", "end"):
        if opts.get(key) is not None:
            opts[key] = int(round(opts[key] * cfg.train.multiplier))
    common = dict(sparsity=s.sparsity, total_steps=total, seed=cfg.seed, pattern=s.pattern,
                  pattern_overrides=dict(s.pattern_overrides) or None, **plan_rules(cfg))
    if s.backend == "masked":
        if s.backend_options:
            raise ConfigError("sparsity.backend_options apply to sparsity.backend=sparse only; remove them")
        return SparsityEngine(model, optimizer, s.method, **common, **opts)
    from ..sparsity.backend import build_sparse_engine
    return build_sparse_engine(model, optimizer, s.method, device=device, world=world,
                               backend_options=s.backend_options, **common, **opts)
