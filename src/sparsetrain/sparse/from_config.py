"""Building the sparse engine from a run config (``sparsity.backend = "sparse"``).

Everything a user can get wrong here is a one-line :class:`ConfigError` before the model is
touched: a device other than the CPU, several processes, a method whose equivalence with the
masked-dense engine is not established by our tests, an unknown backend option.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

import torch
from torch import nn

from ..errors import ConfigError
from .engine import SparseEngine

log = logging.getLogger(__name__)

#: methods tested step for step against the masked-dense engine (tests/test_sparse_backend.py)
SUPPORTED_METHODS = ("static", "set", "rigl", "snfs", "gmp")

#: keyword arguments of SparseEngine that are backend options (the rest are the engine's own)
BACKEND_OPTIONS = ("max_density", "min_size", "overrides", "cache_transpose", "block_elems", "kernel")
#: each option's accepted types and how to name them in an error
OPTION_TYPES = {"max_density": ((int, float), "a number in [0, 1]"), "min_size": ((int,), "an integer"),
                "overrides": ((Mapping,), "a table {weight-name pattern: 'sparse' | 'dense'}"),
                "cache_transpose": ((bool,), "true or false"), "block_elems": ((int,), "an integer"),
                "kernel": ((str,), "'mkl' or 'sparseprop'")}


def build_sparse_engine(model: nn.Module, optimizer: Optional[torch.optim.Optimizer], method: str, *,
                        device: torch.device, world: int, backend_options: Mapping[str, Any],
                        **engine_options) -> SparseEngine:
    """A :class:`SparseEngine` for a training run, after checking the run can use it."""
    if torch.device(device).type != "cpu":
        raise ConfigError(f"sparsity.backend=sparse runs on the CPU only; set train.device=cpu or "
                          f"sparsity.backend=masked (device is {device})")
    if world > 1:
        raise ConfigError("sparsity.backend=sparse does not support torchrun/DDP yet; run one process or "
                          "use sparsity.backend=masked")
    if method not in SUPPORTED_METHODS:
        raise ConfigError(f"sparsity.backend=sparse supports the methods {', '.join(SUPPORTED_METHODS)}; "
                          f"use sparsity.backend=masked for '{method}'")
    unknown = sorted(set(backend_options) - set(BACKEND_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown sparsity.backend_options {unknown}; valid: {', '.join(BACKEND_OPTIONS)}")
    for key, value in backend_options.items():
        types, what = OPTION_TYPES[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ConfigError(f"sparsity.backend_options.{key} must be {what}, got {value!r}")
    engine = SparseEngine(model, optimizer, method, **backend_options, **engine_options)
    if not engine.layers:
        log.warning("sparsity.backend=sparse: no layer qualifies for compressed storage (each needs "
                    "density <= max_density and >= min_size weights, see docs/performance.md); every "
                    "layer trains masked-dense. Lower min_size or force layers with backend_options.overrides")
    return engine  # the engine itself logs which layers it compressed
