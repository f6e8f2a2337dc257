"""Choosing an engine's storage backend: the truly sparse CPU backend by name, and from a run config.

* :func:`SparseEngine` — ``SparsityEngine(..., storage=BackendPolicy(...))`` with the policy's
  fields as keyword arguments (the spelling of earlier versions, kept for scripts and benchmarks);
* :func:`use_sparse_backend` / :func:`use_dense_backend` — switch an engine's storage in place;
* :func:`build_sparse_engine` — the engine of a run with ``sparsity.backend = "sparse"``
  (:func:`check_sparse_backend` its checks, also made before a model is built sparse). Everything
  a user can get wrong there is a one-line :class:`ConfigError` before the model is touched: a
  device other than the CPU, several processes, a method that does not declare
  ``runs_on_compressed`` (its equivalence with masked-dense storage is not established by our
  tests), an unknown backend option or one of the wrong type.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping, Optional

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import METHODS
from .engine import SparsityEngine
from .masks import unwrap
from .storage import BackendPolicy

log = logging.getLogger(__name__)

#: keyword arguments of SparseEngine that are backend options (the rest are the engine's own)
BACKEND_OPTIONS = tuple(f.name for f in dataclasses.fields(BackendPolicy))
#: each option's accepted types and how to name them in an error
OPTION_TYPES = {"max_density": ((int, float), "a number in [0, 1]"), "min_size": ((int,), "an integer"),
                "overrides": ((Mapping,), "a table {weight-name pattern: 'sparse' | 'dense'}"),
                "cache_transpose": ((bool,), "true or false"), "block_elems": ((int,), "an integer"),
                "kernel": ((str,), "'auto', 'native', 'mkl' or 'sparseprop'"), "conv_min_size": ((int,), "an integer"),
                "conv_kernel": ((str,), "'auto', 'native', 'mkl' or 'sparseprop'")}


def _policy(options: Mapping[str, Any]) -> BackendPolicy:
    known = {k: v for k, v in options.items() if k in BACKEND_OPTIONS}
    return BackendPolicy(**{**known, "overrides": dict(known.get("overrides") or {})})


def SparseEngine(model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None, method: str = "rigl",
                 **options) -> SparsityEngine:  # noqa: N802  (reads as the class it once was)
    """A :class:`SparsityEngine` whose eligible layers run truly sparse on CPU: the options named in
    :class:`BackendPolicy` (``max_density``, ``min_size``, ``overrides``, ``cache_transpose``,
    ``kernel``, ``block_elems``) form its storage policy, the rest are the engine's own."""
    engine_options = {k: v for k, v in options.items() if k not in BACKEND_OPTIONS}
    return SparsityEngine(model, optimizer, method, storage=_policy(options), **engine_options)


SparseEngine.from_sparse_model = SparsityEngine.from_sparse_model


def use_sparse_backend(model: nn.Module, engine: SparsityEngine, **options) -> SparsityEngine:
    """Switch a training run to the truly sparse CPU backend; returns ``engine``, now holding its
    eligible layers compressed.

    Eligible Linear layers of ``model`` (that of ``engine``) are replaced in place by
    ``SparseLinear``, eligible nn.LSTM / nn.GRU by ``SparseLSTM`` / ``SparseGRU``; ``engine.optimizer``'s
    parameter groups and state follow. ``options`` are :class:`BackendPolicy`'s fields. Call it
    after building the engine and optimizer, before the first step (or between steps).
    """
    if unwrap(model) is not engine.model:
        raise ConfigError("use_sparse_backend: 'model' is not the model the engine was built on")
    if engine.policy is not None:
        raise ConfigError("the engine already uses the sparse backend")
    unknown = sorted(set(options) - set(BACKEND_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown sparse backend options {unknown}; valid: {', '.join(BACKEND_OPTIONS)}")
    return engine.use_storage(_policy(options))


def use_dense_backend(model: nn.Module, engine: SparsityEngine) -> SparsityEngine:
    """The way back: every compressed layer of ``model`` becomes an nn.Linear (nn.LSTM, nn.GRU)
    again, optimizer state scattered to dense; returns ``engine``, now all masked-dense."""
    if unwrap(model) is not engine.model:
        raise ConfigError("use_dense_backend: 'model' is not the model the engine was built on")
    return engine.use_storage(None)


def compressible_methods() -> list:
    """Names of the registered methods that declare ``runs_on_compressed``."""
    return [n for n in METHODS.names() if METHODS.get(n).runs_on_compressed]


def check_sparse_backend(method: str, *, device: torch.device, world: int,
                         backend_options: Mapping[str, Any]) -> BackendPolicy:
    """The storage policy of a run with ``sparsity.backend = "sparse"``, after checking the run can use it."""
    if torch.device(device).type != "cpu":
        raise ConfigError(f"sparsity.backend=sparse runs on the CPU only; set train.device=cpu or "
                          f"sparsity.backend=masked (device is {device})")
    if world > 1:
        raise ConfigError("sparsity.backend=sparse does not support torchrun/DDP yet; run one process or "
                          "use sparsity.backend=masked")
    if not METHODS.get(method).runs_on_compressed:
        raise ConfigError(f"sparsity.backend=sparse supports the methods {', '.join(compressible_methods())}; "
                          f"use sparsity.backend=masked for '{method}'")
    unknown = sorted(set(backend_options) - set(BACKEND_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown sparsity.backend_options {unknown}; valid: {', '.join(BACKEND_OPTIONS)}")
    for key, value in backend_options.items():
        types, what = OPTION_TYPES[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ConfigError(f"sparsity.backend_options.{key} must be {what}, got {value!r}")
    return _policy(backend_options)


def build_sparse_engine(model: nn.Module, optimizer: Optional[torch.optim.Optimizer], method: str, *,
                        device: torch.device, world: int, backend_options: Mapping[str, Any],
                        **engine_options) -> SparsityEngine:
    """A :class:`SparsityEngine` with a storage policy for a training run (:func:`check_sparse_backend`);
    ``model`` may come from ``build_sparse`` with the same plan."""
    policy = check_sparse_backend(method, device=device, world=world, backend_options=backend_options)
    engine = SparsityEngine(model, optimizer, method, storage=policy, **engine_options)
    if not engine.layers:
        log.warning("sparsity.backend=sparse: no layer qualifies for compressed storage (each needs "
                    "density <= max_density and >= min_size weights, see docs/performance.md); every "
                    "layer trains masked-dense. Lower min_size or force layers with backend_options.overrides")
    return engine  # the engine itself logs which layers it compressed
