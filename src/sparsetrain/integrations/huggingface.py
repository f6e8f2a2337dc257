"""Hugging Face Transformers: a ``TrainerCallback`` and a ``Trainer`` subclass that train sparse.

::

    from sparsetrain.integrations.huggingface import SparseTrainer, SparsityCallback

    trainer = SparseTrainer(model=model, args=args, train_dataset=ds,
                            sparsity=dict(method="rigl", sparsity=0.9, delta_t=100))   # the paper's rule
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[SparsityCallback("rigl", sparsity=0.9)])           # a plain Trainer

Sparsified by default: the weights of ``nn.Linear`` layers (attention query/key/value/output and
the MLP projections), except the task heads (:data:`HEAD_PATTERNS`: pooler, classifier, ``cls.``,
``lm_head``, ``score``, ``qa_outputs``); embeddings, LayerNorm and biases stay dense. Models
built from ``transformers.pytorch_utils.Conv1D`` (GPT-2) have no ``nn.Linear`` projections, so
nothing of them is sparsified.

**SparseTrainer** follows the paper: at the last micro-batch of each optimizer step (gradients
accumulated and all-reduced) it lets the method read the gradients before clipping, then clears
them on RigL's update steps so the optimizer step changes nothing (:mod:`.driver`).

**SparsityCallback** runs the same engine from ``on_pre_optimizer_step``, which the Trainer calls
after clipping: the method reads clipped gradients (and, under fp16 with ``max_grad_norm=0``,
gradients still multiplied by the loss scale). By default (``skip_optimizer_step=False``) the
optimizer also steps on update iterations, the deviation from the paper that Trainer callbacks
have had so far; ``skip_optimizer_step=True`` clears the gradients there as SparseTrainer does.

Both write the engine state as ``sparsity_engine.pt`` into each checkpoint folder and read it
back on ``trainer.train(resume_from_checkpoint=...)``. Limits: one process or DDP (whole
parameters on every process; FSDP and DeepSpeed are refused); SparseTrainer refuses fp16 (use
bf16); a callback resuming from a folder other than ``output_dir/checkpoint-<step>`` needs
``callback.resume_dir``.
"""
from __future__ import annotations

import fnmatch
import os
from typing import Any, Dict, Optional

import torch

from ..errors import CheckpointError, ConfigError
from .driver import EngineDriver

try:
    from transformers import Trainer, TrainerCallback
except ImportError:
    raise ImportError("sparsetrain.integrations.huggingface needs transformers: pip install 'sparsetrain[hf]'") from None

__all__ = ["SparsityCallback", "SparseTrainer", "HEAD_PATTERNS", "ENGINE_FILE"]

#: parameter-name patterns of task heads, kept dense unless ``exclude`` is given
HEAD_PATTERNS = ("*pooler*", "*classifier*", "cls.*", "*lm_head*", "*score*", "*qa_outputs*")
#: the engine state's file inside a Trainer checkpoint folder
ENGINE_FILE = "sparsity_engine.pt"


def _inner(optimizer):
    """The torch optimizer inside accelerate's wrapper."""
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


class SparsityCallback(TrainerCallback):
    """Sparse training inside a ``transformers.Trainer`` (see the module docstring).

    Args:
        method, sparsity: as for :class:`~sparsetrain.sparsity.engine.SparsityEngine`.
        total_steps: optimizer steps; None: the Trainer's ``state.max_steps``.
        skip_optimizer_step: clear the gradients where the engine says not to step. Default
            False (the optimizer steps on update iterations: a deviation from the paper).
        exclude: parameter-name patterns kept dense; None: those of :data:`HEAD_PATTERNS` that
            match a parameter of the model; ``()``: none.
        **options: further engine keyword arguments (``distribution``, ``include``, ``seed``,
            ``delta_t``, ``alpha``, ...).
    """

    def __init__(self, method: str = "rigl", sparsity: Optional[float] = 0.9, *, total_steps: Optional[int] = None,
                 skip_optimizer_step: bool = False, exclude=None, **options):
        self.driver = EngineDriver(method, sparsity, total_steps, skip_optimizer_step,
                                   {"exclude": list(exclude) or None if exclude is not None else None, **options})
        self._head_default = exclude is None
        self.reads_in_pre_optimizer_step = True  # SparseTrainer reads earlier, before clipping
        self.resume_dir: Optional[str] = None

    @property
    def engine(self):
        return self.driver.engine

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if getattr(args, "fsdp", None) or getattr(args, "deepspeed", None):
            raise ConfigError("the sparsity callback needs whole parameters on every process; FSDP and DeepSpeed "
                              "shard them: train on one process or with DDP")
        if self.engine is None and state.global_step > 0:
            folder = self.resume_dir or os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            path = os.path.join(folder, ENGINE_FILE)
            if not os.path.isfile(path):
                raise CheckpointError(f"resuming at step {state.global_step} but '{path}' is missing; resume from a "
                                      "checkpoint written with the sparsity callback (or set callback.resume_dir)")
            self.driver.load_state_dict(torch.load(path, map_location="cpu", weights_only=False))
        if self._head_default and self.engine is None:
            names = [n for n, _ in model.named_parameters()]
            heads = [p for p in HEAD_PATTERNS if any(fnmatch.fnmatchcase(n, p) for n in names)]
            self.driver.options["exclude"] = heads or None
        self.driver.start(model, _inner(optimizer), state.max_steps)

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self.reads_in_pre_optimizer_step:
            self.driver.before_optimizer_step(_inner(optimizer))

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.driver.after_optimizer_step()

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.engine is not None:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            os.makedirs(folder, exist_ok=True)
            torch.save(self.driver.state_dict(), os.path.join(folder, ENGINE_FILE))


class SparseTrainer(Trainer):
    """A ``transformers.Trainer`` that trains sparse as the paper does: gradients read before
    clipping, the optimizer step skipped on update iterations. ``sparsity``: the arguments of
    :class:`SparsityCallback` (``method``, ``sparsity``, ``exclude``, engine options)."""

    def __init__(self, *args, sparsity: Optional[Dict[str, Any]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.fp16:
            raise ConfigError("SparseTrainer reads gradients before the fp16 loss scale is removed; use bf16=True, "
                              "or SparsityCallback with max_grad_norm > 0")
        options = {"skip_optimizer_step": True, **dict(sparsity or {})}
        self.sparsity_callback = SparsityCallback(**options)
        self.sparsity_callback.reads_in_pre_optimizer_step = False
        self.add_callback(self.sparsity_callback)

    @property
    def engine(self):
        return self.sparsity_callback.engine

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if isinstance(resume_from_checkpoint, (str, os.PathLike)):
            self.sparsity_callback.resume_dir = str(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def training_step(self, model, inputs, *args, **kwargs):
        loss = super().training_step(model, inputs, *args, **kwargs)
        if self.accelerator.sync_gradients:  # the last micro-batch: gradients complete, not yet clipped
            self.sparsity_callback.driver.before_optimizer_step(_inner(self.optimizer))
        return loss

