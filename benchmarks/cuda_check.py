"""CUDA path check: the engine's invariants on a GPU, AMP (fp16 GradScaler and bf16 autocast),
the CLI on CUDA, and speed (masked-dense RigL vs dense; 2:4 semi-structured sparse matmul).

Run on a machine with an NVIDIA GPU (takes about a minute):

    PYTHONPATH=src python benchmarks/cuda_check.py --out docs/perf/cuda_check.json

Checks (each a pass/fail with the measured numbers):
* ``engine``: RigL 90 % ERK on an MLP on CUDA for 60 steps (ΔT = 10): masks live on the GPU,
  exact active counts per layer after every update, masked weights exactly zero, every truly
  new connection zero with zero momentum right after its update.
* ``amp_fp16``: the same under ``torch.autocast(float16)`` + ``GradScaler`` through
  ``engine.step_optimizer(scaler=scaler)``; ``amp_bf16``: bf16 autocast, no scaler.
* ``same_seed``: two engines built with the same seed on the GPU hold identical masks.
* ``cli``: ``python -m sparsetrain train`` on the embedded digits data with ``train.device=cuda``
  (and ``train.amp=true``): exit code, accuracy, achieved sparsity.
* speed: one training step of a 1024-4096-4096-4096-10 MLP, batch 1024, masked-dense RigL
  (regular and update steps) against dense, medians of CUDA-event timings; and a 4096×4096
  fp16 linear layer with a 2:4 pattern through ``torch.sparse.to_sparse_semi_structured``
  against the dense product (where torch and the GPU support it).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

from sparsetrain import SparsityEngine


def mlp(sizes, seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def engine_run(device, amp=None, steps=60, seed=0):
    model = mlp([64, 256, 256, 10], seed).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    eng = SparsityEngine(model, opt, "rigl", sparsity=0.9, distribution="erk", total_steps=steps,
                         delta_t=10, seed=seed)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    g = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(512, 64, generator=g).to(device)
    y = torch.randint(0, 10, (512,), generator=g).to(device)
    first = {n: m.clone() for n, m in eng.masks.items()}
    ok = {"masks_on_device": all(m.device.type == torch.device(device).type for m in eng.masks.values()),
          "exact_counts": True, "masked_zero": True, "new_zero_with_zero_state": True, "updates": 0}
    for step in range(steps):
        i = torch.randint(0, 512, (64,), generator=g).to(device)
        opt.zero_grad(set_to_none=False)
        with torch.autocast(torch.device(device).type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = F.cross_entropy(model(x[i]), y[i])
        before = {n: m.clone() for n, m in eng.masks.items()}
        if scaler is not None:
            scaler.scale(loss).backward()
            eng.step_optimizer(scaler=scaler)  # unscale, engine, scaler step (unless skipped), update
        else:
            loss.backward()
            eng.step_optimizer()
        for t in eng.targets:
            m, p = eng.masks[t.name], eng.param(t.name).detach()
            ok["exact_counts"] &= int(m.sum()) == int(first[t.name].sum())
            ok["masked_zero"] &= bool((p[~m] == 0).all())
            new = m & ~before[t.name]
            if new.any():
                ok["updates"] += 1
                buf = opt.state.get(eng.param(t.name), {}).get("momentum_buffer")
                ok["new_zero_with_zero_state"] &= bool((p[new] == 0).all()) and (
                    buf is None or bool((buf[new] == 0).all()))
    ok["final_loss"] = float(loss.detach())
    ok["density"] = eng.density_report()["weights_density"]
    ok["passed"] = all(ok[k] for k in ("masks_on_device", "exact_counts", "masked_zero",
                                       "new_zero_with_zero_state")) and ok["updates"] > 0
    return ok, {n: m.cpu() for n, m in eng.masks.items()}


def same_seed(device):
    a = SparsityEngine(mlp([64, 256, 256, 10]).to(device), None, "set", sparsity=0.9, total_steps=10, seed=5)
    b = SparsityEngine(mlp([64, 256, 256, 10]).to(device), None, "set", sparsity=0.9, total_steps=10, seed=5)
    return {"passed": all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)}


def cli(device, amp):
    out = tempfile.mkdtemp()
    cmd = [sys.executable, "-m", "sparsetrain", "train", "--quiet", "--out-dir", out,
           "--set", f"train.device={device}", "--set", f"train.amp={'true' if amp else 'false'}"]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    res = {"cmd": " ".join(cmd[1:]), "exit": p.returncode, "seconds": round(time.time() - t0, 1),
           "stdout": p.stdout.strip()[-300:], "stderr": p.stderr.strip()[-300:]}
    res["passed"] = p.returncode == 0 and "test accuracy" in p.stdout
    return res


def cuda_median_ms(fn, reps=20, warmup=5):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times), min(times), max(times)


def speed_step(device):
    """Dense vs masked-dense RigL training step, wide MLP, batch 1024 (grad buffers reused)."""
    sizes, batch = [1024, 4096, 4096, 4096, 10], 1024
    x = torch.randn(batch, sizes[0], device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    out = {}
    for name in ("dense", "rigl-0.9", "rigl-0.99"):
        model = mlp(sizes).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        eng = None
        if name != "dense":
            eng = SparsityEngine(model, opt, "rigl", sparsity=float(name.split("-")[1]), distribution="uniform",
                                 dense_first=False, total_steps=10 ** 6, delta_t=10 ** 6, start=10 ** 6)

        def step():
            opt.zero_grad(set_to_none=False)
            F.cross_entropy(model(x), y).backward()
            if eng is None:
                opt.step()
            else:
                eng.step_optimizer()
        out[name] = cuda_median_ms(step)
        if eng is not None:
            out[name + "-update"] = cuda_median_ms(lambda: eng.update_masks(0.3), reps=10, warmup=2)
    return {k: {"median_ms": round(v[0], 3), "min_ms": round(v[1], 3), "max_ms": round(v[2], 3)}
            for k, v in out.items()}


def semi_structured(device):
    """fp16 4096x4096 weight with a 2:4 pattern, batch 8192: dense vs semi-structured product."""
    try:
        from torch.sparse import to_sparse_semi_structured
    except ImportError as e:
        return {"available": False, "why": str(e)}
    w = torch.randn(4096, 4096, device=device, dtype=torch.float16)
    keep = torch.topk(w.abs().view(-1, 4), 2, dim=1).indices
    mask = torch.zeros_like(w, dtype=torch.bool).view(-1, 4).scatter_(1, keep, True).view_as(w)
    w = w * mask
    x = torch.randn(8192, 4096, device=device, dtype=torch.float16)
    try:
        ws = to_sparse_semi_structured(w)
        diff = (F.linear(x, ws) - F.linear(x, w)).abs().max().item()
    except Exception as e:  # noqa: BLE001  (report whatever the build refuses)
        return {"available": False, "why": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    dense = cuda_median_ms(lambda: F.linear(x, w))
    sparse = cuda_median_ms(lambda: F.linear(x, ws))
    return {"available": True, "max_abs_diff": diff, "dense_ms": round(dense[0], 4), "sparse_ms": round(sparse[0], 4),
            "speedup": round(dense[0] / sparse[0], 3)}


def report(paths) -> str:
    """Markdown table of one or more result files (columns in the order given)."""
    runs = [json.load(open(p)) for p in paths]
    head = "| check | " + " | ".join(f"{os.path.basename(p)} ({r['device']}, torch {r['torch']})"
                                   for p, r in zip(paths, runs)) + " |"
    rows = [head, "|---" * (len(runs) + 1) + "|"]
    for key in ("engine", "amp_fp16", "amp_bf16", "same_seed", "cli", "cli_amp"):
        rows.append(f"| {key} | " + " | ".join("pass" if r.get(key, {}).get("passed") else "FAIL" for r in runs) + " |")
    for key in ("dense", "rigl-0.9", "rigl-0.9-update", "rigl-0.99", "rigl-0.99-update"):
        what = f"topology update (update_masks(0.3)) ms, {key[:-7]}" if key.endswith("-update") else f"training step ms, {key}"
        rows.append(f"| {what} (median, min-max) | " + " | ".join(
            "{median_ms:.3f} ({min_ms:.3f}-{max_ms:.3f})".format(**r["speed_step"][key]) for r in runs) + " |")
    rows.append("| 2:4 semi-structured vs dense fp16 product (speed-up) | " + " | ".join(
        f"{r['semi_structured_2_4'].get('speedup', 'n/a')}" for r in runs) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--report", nargs="+", metavar="JSON", help="print the Markdown table of result files and exit")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="docs/perf/cuda_check.json")
    ap.add_argument("--skip-speed", action="store_true")
    a = ap.parse_args(argv)
    if a.report:
        print(report(a.report))
        return 0
    dev = a.device
    res = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu"}
    res["engine"], masks_a = engine_run(dev)
    _, masks_b = engine_run(dev)
    res["engine"]["rerun_identical_masks"] = all(torch.equal(masks_a[n], masks_b[n]) for n in masks_a)
    if dev.startswith("cuda"):
        res["amp_fp16"], _ = engine_run(dev, torch.float16)
    res["amp_bf16"], _ = engine_run(dev, torch.bfloat16)
    res["same_seed"] = same_seed(dev)
    res["cli"] = cli(dev, False)
    if dev.startswith("cuda"):
        res["cli_amp"] = cli(dev, True)
        if not a.skip_speed:
            res["speed_step"] = speed_step(dev)
            res["semi_structured_2_4"] = semi_structured(dev)
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
