"""The training loop: one screen, straight-line. Everything else is a callback."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, List

import torch

from ..errors import TrainingError


@dataclass
class LoopState:
    """What the loop and its callbacks share. ``step`` counts iterations done."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    batches: Any
    device: torch.device
    total_steps: int
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor]
    engine: Any = None
    step: int = 0
    grad_clip: float = 0.0
    scaler: Any = None
    amp_dtype: Any = None
    callbacks: List[Any] = field(default_factory=list)
    loss: float = float("nan")
    extra: dict = field(default_factory=dict)

    def emit(self, hook: str) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self)


def _optimizer_step(s: LoopState) -> None:
    """Clip (the gradients are already unscaled) and step; under GradScaler its step skips
    overflow steps."""
    if s.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(s.model.parameters(), s.grad_clip)
    if s.scaler is not None:
        s.scaler.step(s.optimizer)
    else:
        s.optimizer.step()


def train_loop(s: LoopState) -> None:
    """forward (autocast under AMP) → backward (scaled under fp16) → unscale → engine.after_backward
    → optimizer step (unless skipped) → scaler update → engine.after_step → LR schedule;
    callbacks evaluate, log and checkpoint."""
    batches = s.batches.from_step(s.step)
    s.emit("on_start")
    while s.step < s.total_steps:
        x, y = (t.to(s.device, non_blocking=True) for t in next(batches))
        with torch.autocast(s.device.type, dtype=s.amp_dtype, enabled=s.amp_dtype is not None):
            loss = s.loss_fn(s.model(x), y)
        if not torch.isfinite(loss):
            raise TrainingError(f"loss became {float(loss.detach())} at step {s.step}; lower optim.lr or set "
                                "optim.grad_clip (the last good checkpoint is kept)")
        s.optimizer.zero_grad(set_to_none=True)
        (s.scaler.scale(loss) if s.scaler is not None else loss).backward()
        if s.scaler is not None:
            s.scaler.unscale_(s.optimizer)  # the engine and clipping read true gradients
        if s.engine is None or s.engine.after_backward():
            _optimizer_step(s)
        if s.scaler is not None:
            s.scaler.update()
        if s.engine is not None:
            s.engine.after_step()
        s.scheduler.step()
        s.step, s.loss = s.step + 1, float(loss.detach())
        s.emit("on_step_end")
    s.emit("on_end")
