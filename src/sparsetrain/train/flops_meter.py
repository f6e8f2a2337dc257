"""Training FLOPs actually spent by a run, tracked from the real masks (Evci et al. 2020, App. H).

:class:`FlopsMeter` is a train-loop callback. It counts the dense forward FLOPs f_D once and the
sparse forward FLOPs f_S from the engine's masks at the start and again only after the masks
change (a new ``engine.last_update``), so the counting pass (one forward of a single example)
runs once per topology update, not per step. Every step adds, per example, 2·f_S plus f_S or
f_D for the weight gradient (f_D when ``method.uses_dense_grad(step)``) to a
:class:`~sparsetrain.flops.FlopsTracker`, whose state travels in the checkpoint so a resumed run
reports what an uninterrupted one would.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from ..flops import FlopsTracker, count_flops, relative_to_dense
from .callbacks import Callback

log = logging.getLogger(__name__)


def input_spec(info) -> Tuple[Tuple[int, ...], Optional[torch.dtype]]:
    """Counting input of a dataset: its example shape, token ids (long) for language models."""
    return tuple(info.input_shape), (torch.long if info.task == "lm" else None)


def mask_densities(engine) -> Dict[str, float]:
    """Fraction of active weights per sparsified tensor, from the engine's current masks
    (through ``density_report``, which every engine backend provides). Layers the sparse
    backend stores compressed are left out: the counter reads their density from the layer."""
    if engine is None:
        return {}
    layers = engine.density_report()["layers"]
    return {name: float(v["density"]) for name, v in layers.items()
            if v.get("sparsified", True) and not engine.is_compressed(name)}


def mask_patterns(engine) -> Dict[str, str]:
    """Sparsity pattern per sparsified tensor (``density_report``'s), for the FLOPs rows."""
    if engine is None:
        return {}
    return {name: v["pattern"] for name, v in engine.density_report()["layers"].items() if "pattern" in v}


class FlopsMeter(Callback):
    """Tracks per-step training FLOPs of a run and summarises them for summary.json.

    Args:
        model: the unwrapped model (not DDP); counted in eval mode under ``no_grad``.
        info: the dataset's :class:`~sparsetrain.data.base.DataInfo` (input shape and task).
        method: the method object (``engine.method``, or an instance for engine-less methods);
            it owns ``training_flops(f_s, f_d)`` and ``uses_dense_grad(step)``.
        engine: the SparsityEngine, or None for dense training (then f_S = the model's dense cost).
        examples_per_step: examples of one optimizer step over all processes.
        multiplier: the extended-training factor M; ratios are given against a 1× dense run.
        reference: the configured dense model when ``model`` differs from it (Small-Dense builds
            a narrower one); f_D and every ratio refer to the reference.
    """

    def __init__(self, model: nn.Module, info, method, engine, examples_per_step: int,
                 multiplier: float = 1.0, reference: Optional[nn.Module] = None):
        self.model, self.method, self.engine = model, method, engine
        self.shape, self.dtype = input_spec(info)
        self.examples_per_step, self.multiplier = int(examples_per_step), float(multiplier)
        self.tracker = FlopsTracker()
        own = float(count_flops(model, self.shape, input_dtype=self.dtype).dense)
        # f_D is the configured dense model's; a narrowed model (Small-Dense) runs at its own cost
        self.f_d = own if reference is None else float(
            count_flops(reference, self.shape, input_dtype=self.dtype).dense)
        self.f_s = own
        self._seen: Any = object()  # the engine's last_update the current f_S belongs to

    def refresh(self) -> None:
        """Recount f_S from the current masks if they changed since the last count."""
        update = None if self.engine is None else self.engine.last_update
        if update is self._seen:
            return
        self._seen = update
        if self.engine is not None:
            report = count_flops(self.model, self.shape, mask_densities(self.engine), input_dtype=self.dtype,
                                 patterns=mask_patterns(self.engine))
            self.f_s = report.sparse
            log.debug("flops: f_S = %.4g (%.4f of f_D)", self.f_s, self.f_s / self.f_d)

    def on_start(self, s) -> None:
        self.refresh()

    def on_step_end(self, s) -> None:
        # s.step was advanced by the loop: the step just done is s.step - 1, run with the f_S
        # of the masks before this step's topology update
        dense = bool(self.method.uses_dense_grad(s.step - 1))
        self.tracker.add_step(self.f_s, self.f_d, dense, self.examples_per_step)
        self.refresh()

    def state_dict(self) -> dict:
        return self.tracker.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.tracker.load_state_dict(state)

    def summary(self) -> Dict[str, Any]:
        """FLOPs entries of summary.json (see docs/flops.md for the definitions)."""
        t, m, f_d = self.tracker, self.multiplier, self.f_d
        formula = self.method.training_flops(self.f_s, f_d)
        return {
            "inference_flops": self.f_s,
            "inference_flops_dense": f_d,
            "inference_flops_ratio": self.f_s / f_d if f_d else 1.0,
            "train_flops": t.total,
            "train_flops_per_example": t.per_example,
            "train_flops_formula": formula,
            "train_flops_ratio": m * relative_to_dense(t.per_example, f_d) if f_d else 1.0,
            "train_flops_formula_ratio": m * relative_to_dense(formula, f_d) if f_d else 1.0,
            "train_flops_multiplier": m,
            "train_flops_dense_grad_steps": t.dense_grad_steps,
        }


def build_flops_meter(model: nn.Module, info, cfg, engine, world: int = 1,
                      reference: Optional[nn.Module] = None) -> FlopsMeter:
    """The meter of a run: the engine's method, or the (validated) engine-less method of ``cfg``;
    ``reference`` is the configured dense model when the trained one differs (Small-Dense)."""
    from ..registry import METHODS

    s = cfg.sparsity
    method = engine.method if engine is not None else METHODS.get(s.method)(**s.options)
    return FlopsMeter(model, info, method, engine, cfg.data.batch_size * world, cfg.train.multiplier,
                      reference)
