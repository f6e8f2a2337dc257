"""The engine's two hooks for a trainer that owns the loop (Lightning, Hugging Face).

A trainer calls :meth:`EngineDriver.before_optimizer_step` once the gradients of an optimizer
step are complete (accumulated, all-reduced, unscaled) and :meth:`EngineDriver.after_optimizer_step`
after the step. Skipping a step (RigL's update iterations, overflow steps) is done by clearing
the gradients (``optimizer.zero_grad(set_to_none=True)``) after the engine read them: PyTorch's
optimizers leave a parameter without a gradient untouched (no momentum, no weight decay, no Adam
step count), so the step that follows changes nothing, without wrapping or patching the
optimizer. An optimizer that updates parameters without gradients would still move them.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..sparsity.engine import SparsityEngine


class EngineDriver:
    """Builds the engine when the trainer has its model and optimizer, and drives it.

    ``options`` are :class:`SparsityEngine` keyword arguments (``distribution``, ``include``,
    ``exclude``, ``seed``, method options such as ``delta_t``). ``skip_optimizer_step``: clear the
    gradients on steps where the engine says not to step (RigL's update iterations, overflow)."""

    def __init__(self, method: str, sparsity: Optional[float], total_steps: Optional[int],
                 skip_optimizer_step: bool, options: Dict[str, Any]):
        if total_steps is not None and int(total_steps) <= 0:
            raise ConfigError(f"total_steps must be a positive integer, got {total_steps}")
        self.method, self.sparsity, self.total_steps = method, sparsity, total_steps
        self.skip_optimizer_step, self.options = skip_optimizer_step, dict(options)
        self.engine: Optional[SparsityEngine] = None
        self._pending_state: Optional[dict] = None
        self._stepping = False

    def start(self, model: nn.Module, optimizer: Optional[torch.optim.Optimizer], total_steps: int) -> SparsityEngine:
        """The engine over ``model`` (a no-op when it exists: a second fit continues it). A state
        loaded before (a resumed checkpoint) is restored without touching the model's loaded
        weights: building an engine masks the weights with fresh initial masks, so the weights
        are kept aside and put back before the saved masks are loaded."""
        if self.engine is not None:
            self.engine.optimizer = optimizer
            return self.engine
        total = int(self.total_steps or total_steps)
        state, self._pending_state = self._pending_state, None
        kept = {k: v.detach().clone() for k, v in model.state_dict().items()} if state is not None else None
        self.engine = SparsityEngine(model, optimizer, self.method, sparsity=self.sparsity, total_steps=total,
                                     **self.options)
        if state is not None:
            model.load_state_dict(kept)
            self.engine.load_state_dict(state)
        return self.engine

    def before_optimizer_step(self, optimizer: Optional[torch.optim.Optimizer] = None,
                              grads_finite: Optional[bool] = None) -> bool:
        """The gradients of one optimizer step are complete: let the method read them and mask
        them. Returns whether the optimizer should step; when it should not and
        ``skip_optimizer_step`` is set, the gradients are cleared so the step is a no-op."""
        engine = self._require()
        run = engine.after_backward(grads_finite)
        if not run and self.skip_optimizer_step:
            (optimizer or engine.optimizer).zero_grad(set_to_none=True)
        self._stepping = True
        return run

    def after_optimizer_step(self) -> bool:
        """After the (possibly skipped) step: topology update, masks re-applied. Returns False
        (and does nothing) when no :meth:`before_optimizer_step` came since the last call."""
        if not self._stepping:
            return False
        self._stepping = False
        self._require().after_step()
        return True

    def _require(self) -> SparsityEngine:
        if self.engine is None:
            raise RuntimeError("the sparsity engine is built when training starts; no step can come before")
        return self.engine

    def state_dict(self) -> dict:
        if self.engine is not None:
            return self.engine.state_dict()
        return dict(self._pending_state or {})

    def load_state_dict(self, state: dict) -> None:
        """Restore now if the engine exists, else when :meth:`start` builds it."""
        if not state:
            return
        if not isinstance(state, dict) or "masks" not in state:
            raise CheckpointError("not a sparsetrain engine state (no masks); resume from a checkpoint "
                                  "written with the same sparsity callback")
        if self.engine is None:
            self._pending_state = state
        else:
            self.engine.load_state_dict(state)
