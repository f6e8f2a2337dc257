"""The Trainer's side of training phases (:mod:`sparsetrain.sparsity.run` defines them).

A method with run hooks returns a list of :class:`~sparsetrain.sparsity.run.Phase`; the Trainer
runs ``train_loop`` once per phase, with the phase's optimizer overrides and extra loss, and
records time-to-ticket. The checkpoint records the phase index.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from ..errors import ConfigError
from ..sparsity.run import Callback, Phase, run_hooks


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


class TicketClock(Callback):
    """Time-to-ticket: the step, epochs, wall time and training FLOPs spent until the method's
    mask is final (the method's ``ticket_step(engine)`` run hook), recorded once and kept in the
    checkpoint.

    IMP's ticket exists after its last pruning round, Gem-Miner's after mining, SNIP's after the
    first batch, a static mask's at step 0 (Sreenivasan et al. 2022, Table 1 compares these).
    """

    def __init__(self, method, engine, steps_per_epoch: int, elapsed: Callable[[], float],
                 flops: Callable[[], Optional[float]] = lambda: None):
        self.hooks = None if method is None else run_hooks(method)
        self.engine, self.steps_per_epoch = engine, steps_per_epoch
        self.elapsed, self.flops = elapsed, flops
        self.record: Optional[Dict[str, Any]] = None

    def on_start(self, s) -> None:
        self._check(s)

    def on_step_end(self, s) -> None:
        self._check(s)

    def _check(self, s) -> None:
        if self.record is not None or self.hooks is None:
            return
        at = self.hooks.ticket_step(self.engine)
        if at is None or s.step < at:
            return
        self.record = {"steps": int(at), "epochs": at / self.steps_per_epoch,
                       "wall_time_s": self.elapsed(), "train_flops": self.flops()}

    def state_dict(self) -> dict:
        return {"record": self.record}

    def load_state_dict(self, state: Optional[dict]) -> None:
        self.record = (state or {}).get("record")

