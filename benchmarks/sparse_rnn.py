"""Training-step time of one recurrent layer: dense nn.LSTM / nn.GRU vs SparseLSTM / SparseGRU.

    python benchmarks/sparse_rnn.py                      # LSTM 1500-1500, seq 35, batch 20
    python benchmarks/sparse_rnn.py --hidden 2048 --cell gru

Protocol: one layer (input size = hidden size), float32, sequence-first input of shape
(seq, batch, hidden), torch threads = 2 (``--threads``). A step is forward + backward of
``(output · G).sum()`` for a fixed random G, after zeroing the gradients (no optimizer step, no
topology update: the layer's own cost). The sparse layers hold exact-count uniformly random
patterns at each density. All configurations live in one process and run in interleaved
rounds (rotating order) so machine noise hits them alike; the table reports the median over
rounds of the mean step time within a round. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List

import torch
from torch import nn

from sparsetrain.sparsity.storage.csr import SparseGRU, SparseLSTM
from sparsetrain.sparsity.masks import random_mask
from sparsetrain.sparsity.topk import count_active

CELLS = {"lstm": (nn.LSTM, SparseLSTM), "gru": (nn.GRU, SparseGRU)}


def sparse_layer(dense: nn.Module, density: float, seed: int) -> nn.Module:
    """The sparse counterpart of ``dense`` with exact-count random masks at ``density``."""
    g = torch.Generator().manual_seed(seed)
    masks = {n: random_mask(p.shape, count_active(p.numel(), density), g)
             for n, p in dense.named_parameters() if n.startswith("weight")}
    return CELLS["lstm" if isinstance(dense, nn.LSTM) else "gru"][1].from_dense(dense, masks)


def make_step(module: nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        module.zero_grad(set_to_none=True)
        (module(x)[0] * grad_out).sum().backward()
    return step


def timed(step: Callable[[], None], n: int) -> float:
    """Mean seconds per call over ``n`` calls."""
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


def measure(steps: Dict[str, Callable[[], None]], rounds: int, per_round: int) -> Dict[str, float]:
    """Median over ``rounds`` interleaved rounds of the mean ms/step of every configuration."""
    for step in steps.values():  # warm-up: kernels, allocator, transposed-structure caches
        step()
    names = list(steps)
    samples: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(1e3 * timed(steps[name], per_round))
    return {n: statistics.median(s) for n, s in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", choices=sorted(CELLS), default="lstm")
    ap.add_argument("--hidden", type=int, default=1500)
    ap.add_argument("--seq", type=int, default=35)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--densities", type=float, nargs="+", default=[0.1, 0.05, 0.01])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--per-round", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dense = CELLS[args.cell][0](args.hidden, args.hidden)
    x = torch.randn(args.seq, args.batch, args.hidden)
    grad_out = torch.randn(args.seq, args.batch, args.hidden)
    modules = {"dense": dense}
    modules.update({f"{d:g}": sparse_layer(dense, d, seed=i) for i, d in enumerate(args.densities)})
    ms = measure({n: make_step(m, x, grad_out) for n, m in modules.items()}, args.rounds, args.per_round)
    name = f"{args.cell.upper()} {args.hidden}-{args.hidden}, seq {args.seq}, batch {args.batch}"
    print(f"{name}, {args.threads} threads, fwd+bwd, median of {args.rounds} rounds x {args.per_round} steps\n")
    print("| layer | density | ms/step | × dense time |")
    print("|---|---:|---:|---:|")
    for key, value in ms.items():
        density = "1 (nn." + args.cell.upper() + ")" if key == "dense" else key
        print(f"| {args.cell.upper()} {args.hidden} | {density} | {value:.1f} | {value / ms['dense']:.2f} |")


if __name__ == "__main__":
    main()
