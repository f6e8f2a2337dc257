"""Lightning: a callback that trains the LightningModule sparse with the engine.

::

    import lightning as L
    from sparsetrain.integrations.lightning import SparsityCallback

    trainer = L.Trainer(max_steps=1000, callbacks=[SparsityCallback("rigl", sparsity=0.9)])
    trainer.fit(module, loader)

The engine's hooks map onto Lightning's:

* ``on_fit_start``: the engine is built over the LightningModule with the (single) optimizer of
  ``configure_optimizers``; ``total_steps`` defaults to ``trainer.estimated_stepping_batches``
  (optimizer steps: gradient accumulation counted).
* ``on_before_optimizer_step``: the gradients are complete (accumulated, all-reduced by DDP,
  unscaled by Lightning's fp16 GradScaler, not yet clipped): the method reads them and they are
  masked. On RigL's update iterations (and AMP overflow steps) the gradients are then cleared,
  so the optimizer step that follows changes nothing (see :mod:`.driver`): the paper's skipped
  step, without manual optimization. The LR scheduler still steps, as in sparsetrain's own loop.
* ``on_train_batch_end``: after an optimizer step, the topology update and mask re-application.
* ``state_dict`` / ``load_state_dict``: the engine state (masks, step, generator, method state)
  travels in Lightning checkpoints; ``fit(ckpt_path=...)`` resumes with the same masks.

Limits: one optimizer (the first of ``configure_optimizers`` is used); automatic optimization,
or manual optimization with one ``optimizer.step()`` per batch; strategies that keep whole
parameters on every process (single device, DDP); FSDP and DeepSpeed shard them and are refused.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

from ..errors import ConfigError
from .driver import EngineDriver

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package
    try:
        import pytorch_lightning as pl
    except ImportError:
        raise ImportError("sparsetrain.integrations.lightning needs Lightning: pip install 'sparsetrain[lightning]'") from None

__all__ = ["SparsityCallback"]


class SparsityCallback(pl.Callback):
    """Sparse training of a LightningModule with ``method`` at ``sparsity``.

    Args:
        method: a registered method (``rigl``, ``set``, ``snfs``, ``static``, ...).
        sparsity: global fraction of zeros over the sparsified layers.
        total_steps: training length in optimizer steps; None: ``trainer.estimated_stepping_batches``.
        skip_optimizer_step: clear the gradients where the engine says not to step (RigL's update
            iterations, the paper's rule; overflow steps). Default True.
        **options: :class:`~sparsetrain.sparsity.engine.SparsityEngine` keyword arguments
            (``distribution``, ``include``, ``exclude``, ``seed``, ``delta_t``, ``alpha``, ...).

    ``engine`` is the :class:`~sparsetrain.sparsity.engine.SparsityEngine` once fitting started.
    """

    def __init__(self, method: str = "rigl", sparsity: Optional[float] = 0.9, *, total_steps: Optional[int] = None,
                 skip_optimizer_step: bool = True, **options):
        super().__init__()
        self.driver = EngineDriver(method, sparsity, total_steps, skip_optimizer_step, options)

    @property
    def engine(self):
        return self.driver.engine

    def on_fit_start(self, trainer, pl_module) -> None:
        strategy = type(trainer.strategy).__name__
        if "FSDP" in strategy or "DeepSpeed" in strategy:
            raise ConfigError(f"SparsityCallback needs whole parameters on every process; {strategy} shards "
                              "them: use strategy='ddp' or a single device")
        if not trainer.optimizers:
            raise ConfigError("SparsityCallback needs an optimizer: return one from configure_optimizers")
        total = self.driver.total_steps or trainer.estimated_stepping_batches
        if total is None or not math.isfinite(total):
            raise ConfigError("training length unknown (max_steps=-1, max_epochs=-1): set max_steps or pass "
                              "SparsityCallback(total_steps=...)")
        engine = self.driver.start(pl_module, trainer.optimizers[0], int(total))
        for name, mask in list(engine.masks.items()):  # Lightning may have moved the module since
            device = engine.param(name).device
            if mask.device != device:
                engine.masks[name] = mask.to(device)
        engine.apply_masks()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.driver.before_optimizer_step(optimizer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.driver.after_optimizer_step()

    def state_dict(self) -> Dict[str, Any]:
        return {"engine": self.driver.state_dict()}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.driver.load_state_dict(state_dict.get("engine"))
