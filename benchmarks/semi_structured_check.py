"""2:4 export check on a GPU: train a Linear layer with the 2:4 pattern, pack it as torch's
semi-structured sparse tensor, check it computes what the masked dense layer computes, and time
the two products.

    PYTHONPATH=src python benchmarks/semi_structured_check.py --out docs/perf/semi_structured_check.json

Without CUDA (or where torch's build or the GPU cannot pack 2:4) it writes ``{"skipped": why}``
and exits 0. Steps:
* RigL with ``pattern=2:4`` on an ``in×out`` Linear (fp32, random regression data, ``--steps``
  steps, ΔT = 10) on the GPU; every mask update keeps exactly 2 per group of 4 (checked).
* Export: ``sparsetrain.sparsity.export.to_semi_structured`` of the fp16 masked weight; the CPU
  packing (``pack_2_4``) must unpack to the same weight.
* Equivalence: ``F.linear(x, packed)`` vs ``F.linear(x, masked dense)`` in fp16, max |diff|
  against an fp16 tolerance scaled by the output magnitude.
* Speed: medians of CUDA-event timings of both products for a few (batch, in, out) sizes.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F
from torch import nn

from cuda_check import cuda_median_ms
from sparsetrain import SparsityEngine
from sparsetrain.sparsity.export import pack_2_4, to_semi_structured, unpack_2_4

SIZES = [(4096, 4096, 4096), (8192, 4096, 4096), (8192, 8192, 8192), (16384, 4096, 11008)]


def train_2_4(d_in: int, d_out: int, steps: int, device) -> nn.Linear:
    """A Linear trained with RigL under the 2:4 pattern; asserts the pattern after every step."""
    torch.manual_seed(0)
    layer = nn.Linear(d_in, d_out).to(device)
    opt = torch.optim.SGD(layer.parameters(), lr=0.01, momentum=0.9)
    eng = SparsityEngine(layer, opt, "rigl", sparsity=0.5, pattern="2:4", total_steps=steps, delta_t=10)
    target = torch.randn(d_out, d_in, device=device) / d_in ** 0.5
    for _ in range(steps):
        x = torch.randn(256, d_in, device=device)
        opt.zero_grad()
        F.mse_loss(layer(x), x @ target.T).backward()
        eng.step_optimizer()
        per = eng.masks["weight"].reshape(-1, 4).sum(1)
        assert bool((per == 2).all()), "a group of 4 lost its 2:4 count"
    return layer


def check(layer: nn.Linear, device) -> dict:
    w = layer.weight.detach().half()
    values, pos = pack_2_4(w.cpu())
    cpu_ok = torch.equal(unpack_2_4(values, pos), w.cpu())
    packed = to_semi_structured(w)
    x = torch.randn(1024, w.shape[1], device=device, dtype=torch.float16)
    ref, got = F.linear(x, w), F.linear(x, packed)
    diff = float((got - ref).abs().max())
    tol = 1e-2 * float(ref.abs().max()) + 1e-2  # fp16 accumulation-order differences
    return {"cpu_pack_roundtrip": cpu_ok, "max_abs_diff": diff, "tolerance": tol, "max_abs_out": float(ref.abs().max()),
            "passed": cpu_ok and diff <= tol}


def speed(device) -> list:
    rows = []
    for batch, d_in, d_out in SIZES:
        w = torch.randn(d_out, d_in, device=device, dtype=torch.float16)
        keep = torch.topk(w.abs().view(-1, 4), 2, dim=1).indices
        w = w * torch.zeros_like(w, dtype=torch.bool).view(-1, 4).scatter_(1, keep, True).view_as(w)
        packed = to_semi_structured(w)
        x = torch.randn(batch, d_in, device=device, dtype=torch.float16)
        dense = cuda_median_ms(lambda: F.linear(x, w))
        sparse = cuda_median_ms(lambda: F.linear(x, packed))
        rows.append({"batch": batch, "in": d_in, "out": d_out, "dense_ms": round(dense[0], 4),
                     "dense_min_max_ms": [round(dense[1], 4), round(dense[2], 4)], "sparse_ms": round(sparse[0], 4),
                     "sparse_min_max_ms": [round(sparse[1], 4), round(sparse[2], 4)],
                     "speedup": round(dense[0] / sparse[0], 3)})
    return rows


def run(steps: int) -> dict:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    device = torch.device("cuda")
    cap = torch.cuda.get_device_capability()
    info = {"device": torch.cuda.get_device_name(), "capability": list(cap), "torch": torch.__version__}
    if cap < (8, 0):
        return {**info, "skipped": "semi-structured sparsity needs compute capability >= 8.0"}
    layer = train_2_4(4096, 4096, steps, device)
    try:
        result = {**info, "equivalence": check(layer, device), "speed": speed(device)}
    except (RuntimeError, NotImplementedError) as e:  # a build without the kernels: say so, do not fail
        return {**info, "skipped": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--steps", type=int, default=100, help="RigL training steps of the 2:4 layer")
    args = ap.parse_args()
    result = run(args.steps)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return 1 if result.get("equivalence", {}).get("passed") is False else 0


if __name__ == "__main__":
    sys.exit(main())
