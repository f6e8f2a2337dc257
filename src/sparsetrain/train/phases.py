"""Training phases: one run = one or more passes of the unchanged train loop.

Most methods train once ("train"). Lottery-ticket methods need more: IMP trains, prunes and
rewinds for several rounds (Frankle & Carbin, ICLR 2019), Gem-Miner and edge-popup mine a mask
over frozen weights and then train the weights under it (Sreenivasan et al., NeurIPS 2022;
Ramanujan et al., CVPR 2020). Such a method returns a list of :class:`Phase` from
``method.phases(trainer)``; the Trainer runs ``train_loop`` once per phase.

Steps are global: phase ``i`` covers steps ``[start_i, start_i + steps_i)``, so batches, metrics
rows and checkpoints keep one increasing step counter. The checkpoint records the phase index.

Hooks, all called with the Trainer:

- ``setup``: structural changes the checkpoint of this phase relies on (e.g. registering score
  parametrizations, freezing weights). Runs on a fresh start AND before a resumed phase loads
  its checkpoint, so it must not depend on training state.
- ``begin``: the transition into the phase (prune, rewind, snapshot). Runs only on a fresh start
  of the phase; the Trainer then saves a checkpoint, so a resumed run never repeats it.
- ``end``: after the phase's last step. Re-runs if a run resumes from the checkpoint written at
  that step, so it must be idempotent (write files whole, key records by phase).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch

from ..errors import ConfigError
from .callbacks import Callback
from .checkpoint import atomic_write_bytes
from .evaluate import evaluate

if TYPE_CHECKING:  # pragma: no cover
    from .runner import Trainer

Hook = Callable[["Trainer"], None]


@dataclass
class Phase:
    """One pass of the train loop.

    Args:
        name: written in every metrics.jsonl row of the phase (``phase`` field).
        steps: length in optimizer iterations.
        optim: overrides of ``optim.*`` config keys for this phase (e.g. ``{"lr": 0.01}``).
        reset_optimizer: build a fresh optimizer and LR schedule (over the parameters that
            require grad after ``setup``) at the phase start; False keeps the Trainer's.
        setup, begin, end: see the module docstring.
        callbacks: extra loop callbacks; they run after each step, before evaluation.
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
    callbacks: Sequence[Any] = ()
    extra_loss: Optional[Callable[[], torch.Tensor]] = None


def default_phases(total_steps: int) -> List[Phase]:
    """The single phase of an ordinary run: the Trainer's optimizer and schedule, no hooks."""
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


def phase_starts(phases: Sequence[Phase]) -> List[int]:
    """Global step at which each phase begins."""
    out, at = [], 0
    for p in phases:
        out.append(at)
        at += int(p.steps)
    return out


def phase_config(cfg, phase: Phase):
    """``cfg`` with the phase's ``optim`` overrides applied (unknown keys are a ConfigError)."""
    if not phase.optim:
        return cfg
    valid = {f.name for f in dataclasses.fields(cfg.optim)}
    unknown = sorted(set(phase.optim) - valid)
    if unknown:
        raise ConfigError(f"phase '{phase.name}' overrides unknown optim key(s) {unknown}; valid: {', '.join(sorted(valid))}")
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, **dict(phase.optim)))


def with_extra_loss(loss_fn: Callable, extra: Optional[Callable[[], torch.Tensor]]) -> Callable:
    """``loss_fn`` plus the phase's regulariser, if any."""
    if extra is None:
        return loss_fn
    return lambda out, y: loss_fn(out, y) + extra()


def evaluate_now(trainer: "Trainer") -> Dict[str, Dict[str, float]]:
    """Metrics of the model as it is now on every evaluation split (val/test)."""
    return {split: evaluate(trainer.model, batches, trainer.device, trainer.info.task)
            for split, batches in trainer.evaluator.splits.items()}


def save_ticket(trainer: "Trainer", scores: Optional[Mapping[str, torch.Tensor]] = None) -> Optional[Path]:
    """Write ``ticket.pt`` in the run directory: the mask, the weights training starts from
    (init or rewind point, masked) and the method's scores if it has any. The ``sanity``
    command reads it (Frankle et al., ICLR 2021 checks)."""
    if trainer.engine is None or not trainer.dist.main:
        return None
    import io

    payload = {"masks": {n: m.detach().cpu().clone() for n, m in trainer.engine.masks.items()},
               "weights": {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()},
               "scores": None if scores is None else {n: s.detach().cpu().float().clone() for n, s in scores.items()},
               "method": trainer.cfg.sparsity.method}
    buf = io.BytesIO()
    torch.save(payload, buf)
    path = trainer.run_dir / "ticket.pt"
    atomic_write_bytes(path, buf.getvalue())
    return path


class TicketClock(Callback):
    """Time-to-ticket: the step, epochs, wall time and training FLOPs spent until the method's
    mask is final (``method.ticket_step(engine)``), recorded once and kept in the checkpoint.

    IMP's ticket exists after its last pruning round, Gem-Miner's after mining, SNIP's after the
    first batch, a static mask's at step 0 (Sreenivasan et al. 2022, Table 1 compares these).
    """

    def __init__(self, method, engine, steps_per_epoch: int, elapsed: Callable[[], float],
                 flops: Callable[[], Optional[float]] = lambda: None):
        self.method, self.engine, self.steps_per_epoch = method, engine, steps_per_epoch
        self.elapsed, self.flops = elapsed, flops
        self.record: Optional[Dict[str, Any]] = None

    def on_start(self, s) -> None:
        self._check(s)

    def on_step_end(self, s) -> None:
        self._check(s)

    def _check(self, s) -> None:
        if self.record is not None or self.method is None:
            return
        at = self.method.ticket_step(self.engine)
        if at is None or s.step < at:
            return
        self.record = {"steps": int(at), "epochs": at / self.steps_per_epoch,
                       "wall_time_s": self.elapsed(), "train_flops": self.flops()}

    def state_dict(self) -> dict:
        return {"record": self.record}

    def load_state_dict(self, state: Optional[dict]) -> None:
        self.record = (state or {}).get("record")

