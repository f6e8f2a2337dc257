"""Named constructors for the common dynamic-sparse-training engines.

Each is ``SparsityEngine(model, optimizer, "<method>", **options)`` and returns that engine; they
exist so that a user's code reads like the paper it follows. Options: see
:class:`~sparsetrain.sparsity.engine.SparsityEngine` (sparsity, distribution, total_steps, ...)
and the method's ``Options`` dataclass (delta_t, alpha, decay, ...).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .engine import SparsityEngine


def Static(model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None, **options) -> SparsityEngine:
    """A random exact-count mask fixed for the whole run (the 'Static' baseline of Evci et al.,
    "Rigging the Lottery: Making All Tickets Winners", ICML 2020)."""
    return SparsityEngine(model, optimizer, "static", **options)


def SET(model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None, **options) -> SparsityEngine:
    """Sparse Evolutionary Training (Mocanu et al., Nature Communications 2018): every ΔT steps drop
    the smallest-magnitude active weights and grow as many at random positions."""
    return SparsityEngine(model, optimizer, "set", **options)


def RigL(model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None, **options) -> SparsityEngine:
    """RigL (Evci et al., ICML 2020): every ΔT steps drop the smallest-magnitude active weights and
    grow as many where the dense gradient is largest; cosine-decayed drop fraction; the optimizer
    step is skipped on update iterations, as in the paper's code."""
    return SparsityEngine(model, optimizer, "rigl", **options)


def SNFS(model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None, **options) -> SparsityEngine:
    """Sparse momentum (Dettmers & Zettlemoyer, "Sparse Networks from Scratch", 2019) in the form
    the RigL paper compares against: growth by an exponential average of dense gradients."""
    return SparsityEngine(model, optimizer, "snfs", **options)
