"""What a multi-phase method sees of a training run: the run protocol, phases and run hooks.

Most methods only answer the engine's topology questions (:class:`~.methods.base.Method`). A
method that drives the run itself opts in with :class:`RunHooks`: lottery-ticket methods train
several times (IMP rounds: Frankle & Carbin, ICLR 2019; mine then train: Ramanujan et al., CVPR
2020, Sreenivasan et al., NeurIPS 2022) and pruning at initialisation scores the first batch
(Lee et al., ICLR 2019). Such a method returns a list of :class:`Phase` and its phase hooks
receive a :class:`RunContext`: the run seen through a small protocol, so methods depend on the
sparsity layer only. The Trainer (``sparsetrain.train``) implements the protocol; a test can
drive the same hooks with a stub.

Steps are global: phase ``i`` covers steps ``[start_i, start_i + steps_i)``, so batches, metrics
rows and checkpoints keep one increasing step counter.

Phase hooks, each called with the :class:`RunContext`:

- ``setup``: structural changes the checkpoint of this phase relies on (e.g. registering score
  parametrizations, freezing weights). Runs on a fresh start AND before a resumed phase loads
  its checkpoint, so it must not depend on training state.
- ``begin``: the transition into the phase (prune, rewind, snapshot). Runs only on a fresh start
  of the phase; the run then saves a checkpoint, so a resumed run never repeats it.
- ``end``: after the phase's last step. Re-runs if a run resumes from the checkpoint written at
  that step, so it must be idempotent (write files whole, key records by phase).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Mapping, Optional, Protocol, Sequence,
                    Tuple, Union)

import torch
import torch.nn.functional as F

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ..data.base import DataInfo
    from .engine import SparsityEngine

Metrics = Dict[str, Dict[str, float]]


class RunContext(Protocol):
    """The run as a multi-phase method sees it (implemented by ``sparsetrain.train.Trainer``)."""

    @property
    def total_steps(self) -> int:
        """Length of one ordinary training run in steps (the configured length × multiplier)."""

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one pass over this process's share of the training set."""

    @property
    def model(self) -> torch.nn.Module:
        """The unwrapped model being trained."""

    @property
    def engine(self) -> Optional["SparsityEngine"]:
        """The run's engine; None for a method that trains without masks."""

    @property
    def device(self) -> torch.device:
        """Where the model lives; batches must be moved here."""

    @property
    def info(self) -> "DataInfo":
        """The dataset's shape facts (``input_shape``, ``task``)."""

    @property
    def is_main(self) -> bool:
        """True in the process that writes files (rank 0, or the only process)."""

    @property
    def last_metrics(self) -> Metrics:
        """{split: metrics} of the latest scheduled evaluation (empty before the first)."""

    def batches(self, from_step: int) -> Iterator[Tuple[torch.Tensor, ...]]:
        """Endless training batches (on the CPU) in the order the run reads them from ``from_step``."""

    def first_batch(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The batch of step 0, on :attr:`device`."""

    def loss_fn(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        """The run's training loss (task loss with the configured label smoothing)."""

    def evaluate(self) -> Metrics:
        """Metrics of the model as it is now on every evaluation split (val/test)."""

    def save_artifact(self, name: str, data: Union[bytes, str]) -> Optional[Path]:
        """Write ``name`` (relative to the run directory, parents created) whole and atomically
        in the main process; returns its path there, None in the others."""

    def elapsed(self) -> float:
        """Wall time of the run so far in seconds, resumed sessions included."""


Hook = Callable[[RunContext], None]


class Callback:
    """A train-loop callback: no-op hooks, subclasses override what they need. Each hook gets the
    loop state (``step``, ``total_steps``, ``model``, ``optimizer``, ``engine``, ``loss``, ...)."""

    def on_start(self, s) -> None: ...

    def on_step_end(self, s) -> None: ...

    def on_end(self, s) -> None: ...


@dataclass
class Phase:
    """One pass of the train loop.

    Args:
        name: written in every metrics.jsonl row of the phase (``phase`` field).
        steps: length in optimizer iterations.
        optim: overrides of ``optim.*`` config keys for this phase (e.g. ``{"lr": 0.01}``).
        reset_optimizer: build a fresh optimizer and LR schedule (over the parameters that
            require grad after ``setup``) at the phase start; False keeps the run's.
        setup, begin, end: see the module docstring.
        callbacks: extra loop callbacks (:class:`Callback`); they run after each step, before
            evaluation.
        extra_loss: a function of no arguments whose value is added to the task loss
            (regularisers such as Gem-Miner's λ·||p||²).
    """

    name: str
    steps: int
    optim: Mapping[str, Any] = field(default_factory=dict)
    reset_optimizer: bool = True
    setup: Optional[Hook] = None
    begin: Optional[Hook] = None
    end: Optional[Hook] = None
    callbacks: Sequence[Callback] = ()
    extra_loss: Optional[Callable[[], torch.Tensor]] = None


def default_phases(total_steps: int) -> List[Phase]:
    """The single phase of an ordinary run: the run's optimizer and schedule, no hooks."""
    return [Phase("train", int(total_steps), reset_optimizer=False)]


def check_phases(phases: Sequence[Phase]) -> List[Phase]:
    """Validate a method's phase list (non-empty, positive lengths, unique names)."""
    phases = list(phases)
    if not phases:
        raise ConfigError("the method declared no training phase; it must return at least one")
    names = [p.name for p in phases]
    if len(set(names)) != len(names):
        raise ConfigError(f"phase names must be unique, got {names}")
    for p in phases:
        if int(p.steps) <= 0:
            raise ConfigError(f"phase '{p.name}' has {p.steps} steps; lengthen training (train.epochs/steps)")
    return phases


class RunHooks:
    """Opt-in mixin of the run-level hooks (mix in before :class:`~.methods.base.Method`).

    A method without it gets these defaults from :func:`run_hooks`; the topology hooks the engine
    calls stay on ``Method``.
    """

    uses_masks: bool  # declared on Method

    @classmethod
    def adjust_config(cls, cfg, info: "DataInfo"):
        """The RunConfig the run builds the model from (Small-Dense narrows the width)."""
        return cfg

    def phases(self, run: RunContext) -> Optional[List[Phase]]:
        """Training phases of a multi-phase method (IMP rounds, mine-then-train); None: one
        ordinary phase."""
        return None

    def ticket_step(self, engine: Optional["SparsityEngine"]) -> Optional[int]:
        """Global step after which the mask no longer changes (time-to-ticket); None while unknown
        or for mask-free methods. Default: 0, the mask is fixed at initialisation."""
        return 0 if self.uses_masks else None

    def eval_metrics(self, engine: "SparsityEngine") -> dict:
        """Extra fields for every evaluation record in metrics.jsonl."""
        return {}

    def report(self) -> dict:
        """Method-specific entries of summary.json (layer sparsities found, rounds, ...)."""
        return {}


class _DefaultHooks(RunHooks):
    """The defaults of :class:`RunHooks` for a method that does not mix it in."""

    def __init__(self, method):
        self.uses_masks = method.uses_masks


def run_hooks(method) -> RunHooks:
    """``method``'s run hooks: the method itself if it mixes in :class:`RunHooks`, else defaults."""
    return method if isinstance(method, RunHooks) else _DefaultHooks(method)


def adjusted_config(method_cls, cfg, info: "DataInfo"):
    """``method_cls.adjust_config(cfg, info)`` for a method with run hooks, else ``cfg``."""
    return method_cls.adjust_config(cfg, info) if issubclass(method_cls, RunHooks) else cfg


def task_loss(output: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy; LM outputs (B, T, V) are flattened over positions. The loss a run trains
    with, and what a saliency method scores with when it is called without a run."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if output.dim() == 3:
        output, target = output.reshape(-1, output.size(-1)), target.reshape(-1)
    return F.cross_entropy(output, target, label_smoothing=label_smoothing)


def to_bytes(obj: Any) -> bytes:
    """``torch.save`` of ``obj`` into memory (for :meth:`RunContext.save_artifact`)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def cpu_copy(tensors: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Detached CPU copies of a {name: tensor} map, safe to keep while training goes on."""
    return {n: t.detach().cpu().clone() for n, t in tensors.items()}


def save_ticket(run: RunContext, scores: Optional[Mapping[str, torch.Tensor]] = None,
                init: Optional[Mapping[str, torch.Tensor]] = None) -> Optional[Path]:
    """Write ``ticket.pt`` in the run directory: the mask, the weights training starts from
    (init or rewind point, masked), the same weights UNMASKED (``init``: the model's state before
    the mask was applied; default the model as it is now) and the method's scores if it has any.

    The ``sanity`` command reads it (Frankle et al., "Pruning Neural Networks at Initialization:
    Why Are We Missing the Mark?", ICLR 2021): a shuffled or inverted mask enables weights the
    ticket pruned, and those must start from their original initial values, not from the zeros
    the masked weights hold."""
    engine = run.engine
    if engine is None or not run.is_main:
        return None
    payload = {"masks": cpu_copy(engine.masks), "weights": cpu_copy(run.model.state_dict()),
               "init": cpu_copy(run.model.state_dict() if init is None else init),
               "scores": None if scores is None else {n: s.float() for n, s in cpu_copy(scores).items()},
               "method": engine.method.name}
    return run.save_artifact("ticket.pt", to_bytes(payload))
