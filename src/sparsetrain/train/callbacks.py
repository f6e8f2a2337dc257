"""Callbacks of the train loop: evaluation + metrics.jsonl, checkpoints, progress, TensorBoard."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from ..sparsity.run import Callback, run_hooks
from .checkpoint import atomic_write_text
from .evaluate import evaluate

__all__ = ["Callback", "MetricsLog", "Evaluator", "Checkpointer", "Progress", "TensorBoard"]

log = logging.getLogger(__name__)


def _due(step: int, every: int, total: int) -> bool:
    return step == total or (every > 0 and step % every == 0)


def _parse(line: str) -> Optional[Dict[str, Any]]:
    """One metrics.jsonl record, or None for an incomplete line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and "step" in record else None


class MetricsLog:
    """metrics.jsonl: one JSON record per line; on resume, records after the checkpoint's step
    are dropped so a resumed run's file equals an uninterrupted run's."""

    def __init__(self, path: Optional[Path]):
        self.path = path

    def truncate_after(self, step: int) -> None:
        if self.path is None or not self.path.exists():
            return
        kept = []
        for ln in self.path.read_text().splitlines():
            record = _parse(ln)
            if record is None:  # a line torn by a kill mid-write: only the last can be, drop it
                break
            if record["step"] <= step:
                kept.append(ln)
        atomic_write_text(self.path, "".join(ln + "\n" for ln in kept))

    def write(self, record: Dict[str, Any]) -> None:
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


class Evaluator(Callback):
    """Evaluates every ``every`` steps and at the end; records loss/accuracy (perplexity for LM),
    global and per-layer density, learning rate and drop fraction."""

    def __init__(self, splits: Dict[str, Any], every: int, task: str, metrics: MetricsLog,
                 phase: str = "train"):
        self.splits, self.every, self.task, self.metrics, self.phase = splits, every, task, metrics, phase
        self.best: Dict[str, float] = {}
        self.last: Dict[str, Dict[str, float]] = {}
        self._loss_sum, self._loss_n = 0.0, 0

    def on_step_end(self, s) -> None:
        self._loss_sum += s.loss
        self._loss_n += 1
        if _due(s.step, self.every, s.total_steps):
            self.run(s)

    def run(self, s) -> None:
        record = {"step": s.step, "phase": self.phase, "train_loss": self._loss_sum / max(1, self._loss_n),
                  "lr": s.optimizer.param_groups[0]["lr"]}
        self._loss_sum, self._loss_n = 0.0, 0
        for split, batches in self.splits.items():
            m = evaluate(s.model, batches, s.device, self.task, s.amp_dtype)
            self.last[split] = m
            record.update({f"{split}_{k}": v for k, v in m.items()})
            key = f"{split}_accuracy"
            self.best[key] = max(self.best.get(key, 0.0), m["accuracy"])
            if "perplexity" in m:  # language models: lower is better
                key = f"{split}_perplexity"
                self.best[key] = min(self.best.get(key, float("inf")), m["perplexity"])
        if s.engine is not None:
            rep = s.engine.density_report()
            record["density"] = rep["weights_density"]
            record["layer_density"] = {n: v["density"] for n, v in rep["layers"].items()}
            record["drop_fraction"] = s.engine.method.drop_fraction(s.step)
            if s.engine.last_update:
                record["last_update"] = {k: v for k, v in s.engine.last_update.items() if k != "per_layer"}
            record.update(run_hooks(s.engine.method).eval_metrics(s.engine))  # e.g. a mined mask's density
        s.extra["last_eval"] = record
        self.metrics.write(record)

    def state_dict(self) -> dict:
        return {"best": dict(self.best), "last": self.last, "loss": [self._loss_sum, self._loss_n]}

    def load_state_dict(self, st: dict) -> None:
        self.best, self.last = dict(st["best"]), st["last"]
        self._loss_sum, self._loss_n = st["loss"]


class Checkpointer(Callback):
    """Calls ``save(state)`` every ``every`` steps and at the end (atomic writes are the saver's)."""

    def __init__(self, every: int, save: Callable[[Any], None]):
        self.every, self.save = every, save

    def on_step_end(self, s) -> None:
        if _due(s.step, self.every, s.total_steps):
            self.save(s)


class Progress(Callback):
    """Progress on stderr. On a terminal (or ``on``) a tqdm bar with loss, last accuracy, density
    and ETA; in a log (``auto`` when stderr is not a terminal: nohup, Slurm, CI) one plain line at
    the start, every ``interval`` seconds and at the end; ``off``: nothing."""

    def __init__(self, mode: str, desc: str = "train", interval: float = 60.0):
        tty = sys.stderr.isatty()
        self.enabled = mode == "on" or (mode == "auto" and tty)
        self.plain = mode == "auto" and not tty
        self.desc, self.bar, self.interval = desc, None, interval
        self._t0 = self._last = 0.0

    def on_start(self, s) -> None:
        if self.enabled:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=s.total_steps, initial=s.step, desc=self.desc, dynamic_ncols=True)
        elif self.plain:
            self._t0 = self._last = time.monotonic()
            self._start_step = s.step
            self._line(s)

    def on_step_end(self, s) -> None:
        if self.plain and time.monotonic() - self._last >= self.interval:
            self._line(s)
        if self.bar is None:
            return
        self.bar.update(1)
        if s.step % 10 == 0 or s.step == s.total_steps:
            self.bar.set_postfix(_postfix(s), refresh=False)

    def _line(self, s) -> None:
        """``train DESC: step N/T (P%)  loss L  test_acc A  elapsed Es  eta Rs``."""
        self._last = time.monotonic()
        elapsed, done = self._last - self._t0, s.step - self._start_step
        eta = f"  eta {elapsed / done * (s.total_steps - s.step):.0f}s" if done > 0 else ""
        post = "".join(f"  {k} {v}" for k, v in _postfix(s).items() if s.step > 0)
        pct = 100.0 * s.step / max(1, s.total_steps)
        print(f"train {self.desc}: step {s.step}/{s.total_steps} ({pct:.0f}%){post}  elapsed {elapsed:.0f}s{eta}",
              file=sys.stderr, flush=True)

    def on_end(self, s) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.plain:
            self._line(s)


def _postfix(s) -> Dict[str, str]:
    """Loss and the last evaluation's accuracy/perplexity and density, formatted."""
    post = {"loss": f"{s.loss:.3f}"}
    ev = s.extra.get("last_eval", {})
    for k in ("val_accuracy", "test_accuracy", "test_perplexity"):
        if k in ev:
            post[k.replace("_accuracy", "_acc")] = f"{ev[k]:.4f}"
    if "density" in ev:
        post["density"] = f"{ev['density']:.3f}"
    return post


class TensorBoard(Callback):
    """Scalars of every evaluation record to TensorBoard (needs the ``tensorboard`` extra)."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(log_dir))
        self._seen = -1

    def on_step_end(self, s) -> None:
        ev = s.extra.get("last_eval")
        if ev and ev["step"] != self._seen:
            self._seen = ev["step"]
            for k, v in ev.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.writer.add_scalar(k, v, ev["step"])

    def on_end(self, s) -> None:
        self.writer.close()
