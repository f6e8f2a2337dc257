"""From a RunConfig to the objects of a run: seed, optimizer, LR schedule, length, engine.

The Trainer (:mod:`.trainer`) wires them into the loop; the run directory is the run store's
(:mod:`sparsetrain.experiments.run_store`).
"""
from __future__ import annotations

import random
from typing import Optional

import numpy as np
import torch

from ..config import RunConfig
from ..errors import ConfigError
from ..registry import METHODS
from ..sparsity.engine import SparsityEngine
from .lr import lr_factor


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
    common = dict(sparsity=s.sparsity, distribution=s.distribution, total_steps=total, dense_first=s.dense_first,
                  dense_last=s.dense_last, include=list(s.include) or None, exclude=list(s.exclude) or None,
                  custom=s.custom, erk_power=s.erk_power, seed=cfg.seed, pattern=s.pattern,
                  pattern_overrides=dict(s.pattern_overrides) or None)
    if s.backend == "masked":
        if s.backend_options:
            raise ConfigError("sparsity.backend_options apply to sparsity.backend=sparse only; remove them")
        return SparsityEngine(model, optimizer, s.method, **common, **opts)
    from ..sparsity.backend import build_sparse_engine
    return build_sparse_engine(model, optimizer, s.method, device=device, world=world,
                               backend_options=s.backend_options, **common, **opts)
