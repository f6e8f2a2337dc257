"""Stopping a run early on request: finish the current step, write a checkpoint, stop.

Slurm sends SIGTERM at a time-out or a preemption and Ctrl-C sends SIGINT. :class:`StopSignals`
turns either into a request that the train loop reads after each step (:class:`StopOnRequest`);
the run then checkpoints atomically and raises :class:`StopRequested`, which the caller turns
into a message and the exit code 128 + signal number (143 for SIGTERM, 130 for SIGINT). A
second signal of the same kind while the first is pending stops at once (SIGINT raises
KeyboardInterrupt, SIGTERM keeps its default action).
"""
from __future__ import annotations

import signal
import threading
from typing import Any, Callable, Optional

from ..sparsity.run import Callback

__all__ = ["StopRequested", "StopSignals", "StopOnRequest", "exit_code"]

#: the signals a run stops gracefully on
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_code(signum: int) -> int:
    """The shell's code for death by ``signum``: 128 + signal number (143 SIGTERM, 130 SIGINT)."""
    return 128 + int(signum)


class StopRequested(Exception):
    """A run stopped on request after checkpointing ``step`` in ``run_dir``."""

    def __init__(self, signum: int, run_dir: Any = None, step: Optional[int] = None):
        self.signum, self.run_dir, self.step = int(signum), run_dir, step
        where = f" at step {step} (checkpoint saved in {run_dir})" if run_dir is not None else ""
        super().__init__(f"stopped by {signal.Signals(self.signum).name}{where}")


class StopSignals:
    """Installs SIGTERM/SIGINT handlers that record a stop request; a context manager that puts
    the previous handlers back. ``requested()`` is the signal number asked for, or None."""

    def __init__(self, signals=SIGNALS):
        self.signals, self.signum, self._previous = tuple(signals), None, {}

    def requested(self) -> Optional[int]:
        return self.signum

    def _handle(self, signum: int, frame) -> None:
        if self.signum == signum:  # asked twice: stop now
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.raise_signal(signum)
        self.signum = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # handlers live in the main thread
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


class StopOnRequest(Callback):
    """Checks ``requested()`` after each step; on a request, ``save(state)`` (unless this step is
    saved already) and raise :class:`StopRequested`. Under torchrun every rank must stop at the
    same step (checkpoints are collectives): ``agree(signum)`` returns the ranks' common answer."""

    def __init__(self, requested: Callable[[], Optional[int]], save: Callable[[Any], None],
                 saved_step: Callable[[], Optional[int]], run_dir: Any,
                 agree: Callable[[Optional[int]], Optional[int]] = lambda s: s):
        self.requested, self.save, self.saved_step = requested, save, saved_step
        self.run_dir, self.agree = run_dir, agree

    def on_step_end(self, s) -> None:
        signum = self.agree(self.requested())
        if signum is None:
            return
        if self.saved_step() != s.step:
            self.save(s)
        raise StopRequested(signum, self.run_dir, s.step)
