"""Cost of the SparsityEngine hooks relative to a plain training step (masked-dense engine, CPU).

    python benchmarks/engine_overhead.py --threads 2,1 --out docs/perf/engine_overhead.json
    python benchmarks/engine_overhead.py --report docs/perf/engine_overhead.json   # the doc's table

Protocol
--------
* Models: MLP 784-300-100-10 at batch 128; CNN 3x32x32 → conv3x3 32 → pool → conv3x3 64 → pool →
  fc 10 at batch 64. float32, SGD (lr 0.01, momentum 0.9), cross-entropy, synthetic inputs.
* RigL at sparsity 0.9, ERK, on every Conv/Linear weight.
* Everything runs in ONE process. Each repeat runs, in turn, ``--steps`` steps of:
  plain (zero_grad, forward, backward, ``optimizer.step()``; the ``optimizer.step()`` call is also
  timed on its own), engine (the same with ``after_backward``/``after_step`` on non-update steps;
  the two hooks are also timed on their own), and update (the engine with ΔT = 1, so every step is
  a RigL topology update: the hooks, ``after_backward`` + ``after_step`` with drop/grow, are timed;
  RigL takes no optimizer step there). Per repeat the mean per step is taken; the table reports
  the median [min–max] over repeats and ratios of medians to the plain step. The update-step
  figure rests on ``--repeats`` × ``--steps`` updates (at least 10 are required).
* ``--threads 2,1`` runs everything once per thread count, in that order, into one file.
  ``--out`` stores every timed step (seconds) with the machine and its load before and after;
  ``--report`` prints the table from that file alone.
* Per step, an update costs ``update hooks`` once every ΔT steps: divide by ΔT (100 in the paper)
  for its amortised share.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from perf_common import add_io_flags, command, conclude, machine, read_json, spread, with_range  # noqa: E402

from sparsetrain import SparsityEngine  # noqa: E402

Batch = Tuple[torch.Tensor, torch.Tensor]


def mlp() -> Tuple[nn.Module, Tuple[int, ...], int]:
    """LeNet-300-100 style MLP, its input shape and batch size."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, 10)), (784,), 128


def cnn() -> Tuple[nn.Module, Tuple[int, ...], int]:
    """Small CIFAR-sized CNN, its input shape and batch size."""
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(64 * 8 * 8, 10)), (3, 32, 32), 64


def batches(shape: Tuple[int, ...], size: int, n: int = 4) -> List[Batch]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(size, *shape, generator=g), torch.randint(0, 10, (size,), generator=g)) for _ in range(n)]


class Setup:
    """A model, its optimizer and (optionally) a RigL engine; ``delta_t`` = 1 updates every step."""

    def __init__(self, make: Callable, engine: bool, delta_t: int = 10 ** 6):
        torch.manual_seed(0)
        self.model, shape, size = make()
        self.data = batches(shape, size)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.engine = None
        if engine:
            self.engine = SparsityEngine(self.model, self.opt, "rigl", sparsity=0.9, distribution="erk",
                                         total_steps=10 ** 7, delta_t=delta_t, start=0 if delta_t == 1 else None,
                                         end=10 ** 7)
        self.i = 0

    def step(self) -> Dict[str, float]:
        """One training step; returns the seconds spent in the timed parts."""
        x, y = self.data[self.i % len(self.data)]
        self.i += 1
        t0 = time.perf_counter()
        self.opt.zero_grad()
        nn.functional.cross_entropy(self.model(x), y).backward()
        t1 = time.perf_counter()
        run = self.engine.after_backward() if self.engine else True
        t2 = time.perf_counter()
        if run:
            self.opt.step()
        t3 = time.perf_counter()
        if self.engine:
            self.engine.after_step()
        t4 = time.perf_counter()
        return {"step": t4 - t0, "opt": t3 - t2, "hooks": (t2 - t1) + (t4 - t3)}


MODELS = {"MLP 784-300-100-10, batch 128": mlp, "CNN 3×32×32 c32-c64-fc, batch 64": cnn}
#: the timed parts kept per setup: plain step (and its optimizer.step()), engine step and hooks, update hooks
FIELDS = {"plain": ("step", "opt"), "engine": ("step", "hooks"), "update": ("hooks",)}
MIN_UPDATE_SAMPLES = 10


def measure(make: Callable, repeats: int, steps: int) -> Dict[str, Dict[str, List[List[float]]]]:
    """Seconds of every timed part of every step: setup -> field -> repeat -> steps. The three
    setups run in interleaved repeats."""
    setups = {"plain": Setup(make, False), "engine": Setup(make, True), "update": Setup(make, True, delta_t=1)}
    for s in setups.values():  # warm-up: allocator, optimizer state, first update
        for _ in range(5):
            s.step()
    raw = {k: {f: [] for f in FIELDS[k]} for k in setups}
    for _ in range(repeats):
        for k, s in setups.items():
            rows = [s.step() for _ in range(steps)]
            for f in FIELDS[k]:
                raw[k][f].append([r[f] for r in rows])
    assert setups["update"].engine.last_update["step"] == setups["update"].i - 1
    return raw


def summary(raw: Dict[str, Dict[str, List[List[float]]]]) -> Dict[str, Dict[str, float]]:
    """Median, min and max over repeats of the per-repeat mean, in ms, per (setup, field)."""
    return {f"{k}/{f}": spread(1e3 * sum(rep) / len(rep) for rep in reps)
            for k, fields in raw.items() for f, reps in fields.items()}


def report(results: dict) -> str:
    """The Markdown table of a results file (docs/performance.md)."""
    rows = ["| model | threads | plain step ms | hooks ms, regular step | ÷ plain step | update step hooks ms (n) "
            "| ÷ plain step |", "|---|---|---|---|---|---|---|"]
    for run in results["runs"]:
        for name, raw in run["models"].items():
            s = summary(raw)
            plain, hooks, upd = s["plain/step"], s["engine/hooks"], s["update/hooks"]
            n = sum(len(rep) for rep in raw["update"]["hooks"])
            rows.append(f"| {name} | {run['threads']} | {with_range(plain, 2)} | {with_range(hooks, 3)} "
                        f"| {hooks['median'] / plain['median']:.3f} | {with_range(upd, 2)} ({n}) "
                        f"| {upd['median'] / plain['median']:.2f} |")
    m, r = results["machine"], results["runs"][0]
    rows += ["", f"torch {m['torch']}, {m['cpus']} CPUs, RigL S=0.9 ERK; median [min–max] over {r['repeats']} "
             f"repeats of the mean over {r['steps']} steps; 1-min load average {m['loadavg_before'][0]:.1f} before, "
             f"{m['loadavg_after'][0]:.1f} after."]
    return "\n".join(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", default="2", help="thread counts, comma-separated, run in turn")
    ap.add_argument("--models", default="mlp,cnn", help="mlp, cnn or both")
    add_io_flags(ap)
    args = ap.parse_args(argv)
    if args.report:
        return print(report(read_json(args.report)))
    if args.repeats * args.steps < MIN_UPDATE_SAMPLES:
        ap.error(f"--repeats × --steps must give at least {MIN_UPDATE_SAMPLES} update samples")
    chosen = args.models.split(",")
    models = {name: make for name, make in MODELS.items() if make.__name__ in chosen}
    threads = [int(t) for t in args.threads.split(",")]
    results = {"command": command("engine_overhead.py", argv),
               "machine": machine(threads), "runs": []}
    before = torch.get_num_threads()
    try:
        for t in threads:
            torch.set_num_threads(t)
            results["runs"].append({"threads": t, "repeats": args.repeats, "steps": args.steps,
                                    "loadavg_before": list(os.getloadavg()),
                                    "models": {name: measure(make, args.repeats, args.steps)
                                               for name, make in models.items()},
                                    "loadavg_after": list(os.getloadavg())})
    finally:
        torch.set_num_threads(before)
    conclude(results, args.out, report)


if __name__ == "__main__":
    main()
