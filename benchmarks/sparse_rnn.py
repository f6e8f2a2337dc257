"""Training-step time of one recurrent layer: dense nn.LSTM / nn.GRU vs SparseLSTM / SparseGRU.

    python benchmarks/sparse_rnn.py --configs lstm:1500,lstm:2048,gru:1500 --out docs/perf/rnn.json
    python benchmarks/sparse_rnn.py --report docs/perf/rnn.json      # the table of docs/performance.md

Protocol: one layer per configuration (cell:hidden, input size = hidden size), float32,
sequence-first input of shape (seq, batch, hidden), torch threads = 2 (``--threads``). A step is
forward + backward of ``(output · G).sum()`` for a fixed random G, after zeroing the gradients (no
optimizer step, no topology update: the layer's own cost). The sparse layers hold exact-count
uniformly random patterns at each density. The dense layer and its sparse versions live in one
process and run in interleaved rounds (rotating order) so machine noise hits them alike; each round
times ``--per-round`` steps of every one. The configurations run one after the other. ``--out``
stores every step time, round by round, with the machine and its load before and after;
``--report`` prints, per configuration, the median [min–max] over rounds of the mean step time
within a round and the ratio of medians to dense.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Dict, List

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from perf_common import (add_io_flags, command, conclude, machine, read_json, spread, with_range,  # noqa: E402
                         write_json)

from sparsetrain.sparsity.storage.csr import SparseGRU, SparseLSTM  # noqa: E402
from sparsetrain.sparsity.masks import random_mask  # noqa: E402
from sparsetrain.sparsity.topk import count_active  # noqa: E402

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


def measure(steps: Dict[str, Callable[[], None]], rounds: int, per_round: int) -> Dict[str, List[List[float]]]:
    """Milliseconds of every step, per configuration and round (interleaved, rotating order)."""
    for step in steps.values():  # warm-up: kernels, allocator, transposed-structure caches
        step()
    names = list(steps)
    samples: Dict[str, List[List[float]]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append([1e3 * timed(steps[name], 1) for _ in range(per_round)])
    return samples


def run_config(cell: str, hidden: int, args) -> dict:
    """Time one layer dense and at every density; the raw record of one configuration."""
    torch.manual_seed(0)
    dense = CELLS[cell][0](hidden, hidden)
    x = torch.randn(args.seq, args.batch, hidden)
    grad_out = torch.randn(args.seq, args.batch, hidden)
    modules = {"dense": dense}
    modules.update({f"{d:g}": sparse_layer(dense, d, seed=i) for i, d in enumerate(args.densities)})
    load_before = list(os.getloadavg())
    ms = measure({n: make_step(m, x, grad_out) for n, m in modules.items()}, args.rounds, args.per_round)
    return {"cell": cell, "hidden": hidden, "seq": args.seq, "batch": args.batch, "rounds": args.rounds,
            "per_round": args.per_round, "loadavg_before": load_before, "loadavg_after": list(os.getloadavg()),
            "step_ms": ms}


def round_means(rounds: List[List[float]]) -> List[float]:
    return [sum(r) / len(r) for r in rounds]


def report(results: dict) -> str:
    """The Markdown table of a results file: median [min–max] ms over rounds, × dense time."""
    configs = results["configs"]
    densities = [k for k in configs[0]["step_ms"] if k != "dense"]
    rows = ["| layer | density 1 (torch), ms median [min–max] | " + " | ".join(
        f"density {d}" for d in densities) + " |", "|---" * (2 + len(densities)) + "|"]
    for c in configs:
        st = {k: spread(round_means(v)) for k, v in c["step_ms"].items()}
        cells = [with_range(st["dense"])] + [
            f"{with_range(st[d])} ({st[d]['median'] / st['dense']['median']:.2f}×)" for d in densities]
        rows.append(f"| {c['cell'].upper()} {c['hidden']} | " + " | ".join(cells) + " |")
    m = results["machine"]
    rows.append("")
    rows.append(f"{m['threads']} threads, torch {m['torch']}, {m['cpus']} CPUs; sequence {configs[0]['seq']}, "
                f"batch {configs[0]['batch']}; {configs[0]['rounds']} rounds × {configs[0]['per_round']} steps; "
                f"1-min load average {_load(results)}.")
    return "\n".join(rows)


def _load(results: dict) -> str:
    loads = [c[k][0] for c in results["configs"] for k in ("loadavg_before", "loadavg_after")]
    return f"{min(loads):.1f}–{max(loads):.1f}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="lstm:1500", help="cell:hidden, comma-separated (cells: lstm, gru)")
    ap.add_argument("--seq", type=int, default=35)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--densities", type=float, nargs="+", default=[0.1, 0.05, 0.01])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--per-round", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    add_io_flags(ap)
    args = ap.parse_args(argv)
    if args.report:
        return print(report(read_json(args.report)))
    configs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.configs.split(",")]
    if any(cell not in CELLS for cell, _ in configs):
        ap.error(f"--configs: cells are {', '.join(sorted(CELLS))}")
    results = {"command": command("sparse_rnn.py", argv),
               "machine": machine(args.threads), "configs": []}
    before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        for cell, hidden in configs:
            results["configs"].append(run_config(cell, hidden, args))
            if args.out:
                write_json(args.out, results)  # after every configuration: a stopped run keeps what it measured
    finally:
        torch.set_num_threads(before)
    conclude(results, args.out, report)


if __name__ == "__main__":
    main()
