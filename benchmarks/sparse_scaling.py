"""Memory of the sparse backend as the model grows, and an end-to-end run of a model whose dense
version cannot be trained with Adam on a 24 GB machine.

    python benchmarks/sparse_scaling.py --out docs/perf/sparse_scaling.json

* Scaling: MLP 784-W-W-W-10 at 99 % sparsity (every layer a SparseLinear built sparse with
  ``SparseLinear.random``: no dense matrix ever exists), Adam, RigL (``SparsityEngine.from_sparse_model``),
  batch 128, 2 threads. Each width runs in a fresh subprocess: persistent bytes (weights, indices,
  Adam state; gradients apart), peak RSS over the pre-build baseline during 4 steps including a
  RigL update, median step time. Dense + Adam needs 16 bytes per parameter (weight, gradient,
  two moments).
* End to end: W = 32768 (2.17 billion weights; dense + Adam = 34.8 GB) trained on MNIST at 99 %
  sparsity with RigL (ΔT = 40) for ``--steps`` steps, then evaluated on the 10,000 test images.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from perf_common import read_json  # noqa: E402
from sparse_backend import Runner, _reset_peak, _status_kb, tensor_bytes  # noqa: E402

DATA = os.environ.get("SPARSETRAIN_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


def sparse_mlp(width: int, density: float, seed: int = 0) -> nn.Sequential:
    from sparsetrain.sparsity.storage.csr import SparseLinear
    g = torch.Generator().manual_seed(seed)
    sizes = [784, width, width, width, 10]
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [SparseLinear.random(a, b, density, generator=g, cache_transpose=True), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def dense_params(width: int) -> int:
    sizes = [784, width, width, width, 10]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def make(width: int, density: float, delta_t: int):
    from sparsetrain.sparsity.engine import SparsityEngine
    model = sparse_mlp(width, density)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    engine = SparsityEngine.from_sparse_model(model, opt, "rigl", total_steps=10 ** 6, delta_t=delta_t)
    return model, opt, engine


def train_step(model, opt, engine, x, y) -> float:
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    engine.step_optimizer()
    return float(loss.detach())


def child(width: int, density: float) -> None:
    torch.set_num_threads(2)
    x, y = torch.randn(128, 784), torch.randint(0, 10, (128,))
    warm = make(256, density, delta_t=2)                     # load the kernels before the baseline
    for _ in range(4):
        train_step(*warm, x, y)
    del warm
    _reset_peak()
    base_kb = _status_kb("VmRSS")
    t0 = time.perf_counter()
    model, opt, engine = make(width, density, delta_t=3)
    build_s = time.perf_counter() - t0
    _reset_peak()
    times = []
    for step in range(5):                      # step 3 is the RigL update
        t0 = time.perf_counter()
        train_step(model, opt, engine, x, y)
        times.append((step, time.perf_counter() - t0))
    regular = [t for s, t in times if s not in (0, 3)]
    print(json.dumps({"width": width, "params": dense_params(width),
                      "nnz": sum(p.numel() for p in model.parameters()),
                      "build_s": build_s, "step_s": statistics.median(regular),
                      "update_step_s": times[3][1], "train_peak_mb": (_status_kb("VmHWM") - base_kb) / 1024,
                      "bytes": tensor_bytes(Runner("sparse", model, opt, lambda: False, engine))}))


def mnist(train: bool):
    import torchvision
    ds = torchvision.datasets.MNIST(root=DATA, train=train, download=False)
    x = (ds.data.reshape(len(ds.data), -1).float() / 255.0 - 0.1307) / 0.3081
    return x, ds.targets


def end_to_end(width: int, density: float, steps: int, delta_t: int) -> dict:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    xtr, ytr = mnist(True)
    xte, yte = mnist(False)
    base_kb = _status_kb("VmRSS")
    t0 = time.perf_counter()
    model, opt, engine = make(width, density, delta_t)
    log = {"build_s": time.perf_counter() - t0, "losses": [], "updates": []}
    perm = torch.randperm(len(xtr))
    t0 = time.perf_counter()
    for step in range(steps):
        idx = perm[(step * 128) % len(xtr):][:128]
        loss = train_step(model, opt, engine, xtr[idx], ytr[idx])
        if engine.last_update is not None and engine.last_update["step"] == step:
            log["updates"].append({"step": step, "churn": engine.last_update["churn"]})
        if step % 10 == 0 or step == steps - 1:
            log["losses"].append((step, round(loss, 4)))
            print(f"step {step} loss {loss:.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    log["train_s"] = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        t0 = time.perf_counter()
        pred = torch.cat([model(xte[i:i + 1000]).argmax(1) for i in range(0, len(xte), 1000)])
        log["eval_s"] = time.perf_counter() - t0
    log.update(width=width, params=dense_params(width), nnz=sum(p.numel() for p in model.parameters()),
               steps=steps, test_accuracy=float((pred == yte).float().mean()),
               peak_rss_mb=(_status_kb("VmHWM") - base_kb) / 1024,
               bytes=tensor_bytes(Runner("sparse", model, opt, lambda: False, engine)))
    return log


def report(results: dict) -> str:
    """The width table of docs/performance.md from a results JSON. "× nonzeros' share" is the
    persistent bytes over density × the dense model's weights and Adam moments (12 bytes a weight)."""
    density = results.get("density", 0.01)   # files written before the density was stored: the default
    rows = ["| width W | weights (dense) | nonzeros | dense + Adam would need | sparse persistent | × nonzeros' share "
            "| peak RSS (train) | step | one update step (1 sample: indicative only) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results["scaling"]:
        b = r["bytes"]
        persistent = b["weights"] + b["indices"] + b["optimizer"] + b["masks"]
        rows.append(f"| {r['width']} | {r['params'] / 1e6:,.1f} M | {r['nnz'] / 1e6:.2f} M | "
                    f"{16 * r['params'] / 1e9:.2f} GB | {persistent / 2 ** 20:.1f} MB | "
                    f"{persistent / (density * 12 * r['params']):.2f}× | {r['train_peak_mb']:,.0f} MB | "
                    f"{1e3 * r['step_s']:,.0f} ms | {r['update_step_s']:.1f} s |")
    return "\n".join(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", default="2048,4096,8192,16384,32768")
    ap.add_argument("--density", type=float, default=0.01)
    ap.add_argument("--train-width", type=int, default=32768)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--delta-t", type=int, default=40)
    ap.add_argument("--out", default="docs/perf/sparse_scaling.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--report", metavar="JSON", help="print the width table of a results file and exit")
    args = ap.parse_args(argv)
    if args.child:
        return child(int(args.child), args.density)
    if args.report:
        return print(report(read_json(args.report)))
    out = {"density": args.density, "scaling": []}
    for w in map(int, args.widths.split(",")):
        res = subprocess.run([sys.executable, __file__, "--child", str(w), "--density", str(args.density)],
                             capture_output=True, text=True, check=True)
        out["scaling"].append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(json.dumps(out["scaling"][-1]), flush=True)
    if not args.skip_train:
        out["end_to_end"] = end_to_end(args.train_width, args.density, args.steps, args.delta_t)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
