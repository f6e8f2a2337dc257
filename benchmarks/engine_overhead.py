"""Cost of the SparsityEngine hooks relative to a plain training step (masked-dense engine, CPU).

    python benchmarks/engine_overhead.py [--repeats 7] [--steps 50] [--threads 2]

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
  the median over repeats, and ratios to the plain step and to ``optimizer.step()`` alone.
* Per step, an update costs ``update hooks`` once every ΔT steps: divide by ΔT (100 in the paper)
  for its amortised share.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

from sparsetrain import SparsityEngine

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


def mean_over(setup: Setup, steps: int) -> Dict[str, float]:
    rows = [setup.step() for _ in range(steps)]
    return {k: sum(r[k] for r in rows) / steps for k in rows[0]}


def measure(make: Callable, repeats: int, steps: int) -> Dict[str, float]:
    """Medians (seconds per step) over ``repeats`` interleaved rounds of the three setups."""
    setups = {"plain": Setup(make, False), "engine": Setup(make, True), "update": Setup(make, True, delta_t=1)}
    for s in setups.values():  # warm-up: allocator, optimizer state, first update
        mean_over(s, 5)
    rounds: Dict[str, List[Dict[str, float]]] = {k: [] for k in setups}
    for _ in range(repeats):
        for k, s in setups.items():
            rounds[k].append(mean_over(s, steps))

    def med(k: str, field: str) -> float:
        return statistics.median(r[field] for r in rounds[k])

    assert setups["update"].engine.last_update["step"] == setups["update"].i - 1
    return {"plain": med("plain", "step"), "opt": med("plain", "opt"), "engine": med("engine", "step"),
            "hooks": med("engine", "hooks"), "update": med("update", "hooks")}


def table(results: Dict[str, Dict[str, float]]) -> str:
    head = ("| model | plain step ms | optimizer.step() ms | engine step ms (non-update) | hooks ms (non-update) "
            "| hooks / plain step | hooks / opt.step | update hooks ms | update / plain step | update / opt.step |")
    lines = [head, "|" + "---|" * 10]
    for name, r in results.items():
        ms = {k: 1e3 * v for k, v in r.items()}
        lines.append(f"| {name} | {ms['plain']:.2f} | {ms['opt']:.3f} | {ms['engine']:.2f} | {ms['hooks']:.3f} "
                     f"| {r['hooks'] / r['plain']:.3f} | {r['hooks'] / r['opt']:.2f} | {ms['update']:.2f} "
                     f"| {r['update'] / r['plain']:.2f} | {r['update'] / r['opt']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = {"MLP 784-300-100-10, batch 128": mlp, "CNN 3x32x32 c32-c64-fc, batch 64": cnn}
    results = {name: measure(make, args.repeats, args.steps) for name, make in models.items()}
    print(f"torch {torch.__version__}, {args.threads} threads, RigL S=0.9 ERK, median of {args.repeats} "
          f"repeats x {args.steps} steps\n")
    print(table(results))


if __name__ == "__main__":
    main()
