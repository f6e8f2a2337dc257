"""CUDA mixed-precision check of the engine (the checks that need a GPU; the CPU ones are tests).

Run on a machine with an NVIDIA GPU (under a minute; needs only torch and this source tree):

    PYTHONPATH=src python benchmarks/amp_cuda_check.py --out amp_cuda.json

Checks, each pass/fail with its numbers, written as JSON:
* ``fp16_rigl``: RigL 90 % ERK on an MLP for 60 steps (ΔT = 10) under fp16 autocast and
  GradScaler through ``engine.step_optimizer(scaler=scaler)``: exact active counts per layer after
  every step, masked weights exactly zero, topology updates ran, no spurious overflow.
* ``fp16_overflow_rigl`` / ``fp16_overflow_snfs``: an inf injected into a scaled gradient on an
  update step (the GradScaler's overflow): the scaler skips the step and halves its scale, and the
  engine leaves masks, weights and SNFS's gradient average unchanged, then updates normally at the
  next update step.
* ``fp16_unscaled_average``: SNFS's gradient average under GradScaler (power-of-two scale) equals
  the one of the same fp16-autocast run fed unscaled gradients by hand, bit for bit.
* ``bf16_rigl``: bf16 autocast, no scaler: exact counts, zeros, updates.
* ``cli_fp16`` / ``cli_bf16``: ``sparsetrain train`` on CUDA with ``train.amp=fp16|bf16`` (needs
  scikit-learn for the embedded digits; skipped with the reason otherwise).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

from sparsetrain import SparsityEngine
from sparsetrain.sparsity.topk import count_active


def setup(method, device, seed=0, **options):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    eng = SparsityEngine(model, opt, method, sparsity=0.9, distribution="erk", total_steps=60, delta_t=10,
                         end_fraction=1.0, seed=seed, **options)
    return model, opt, eng


def data(device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1024, 256, generator=g)
    return x.to(device), (x[:, :10].argmax(1)).to(device)


def counts_exact(eng):
    return all(int(m.sum()) == count_active(m.numel(), eng.densities[n]) for n, m in eng.masks.items())


def zeros_exact(eng):
    return all(bool((eng.param(n).detach()[~m] == 0).all()) for n, m in eng.masks.items())


def loss_at(model, x, y, step, dtype):
    i = torch.arange(step * 64, step * 64 + 64, device=x.device) % x.shape[0]
    with torch.autocast("cuda", dtype=dtype):
        return F.cross_entropy(model(x[i]), y[i])


def fp16_rigl(device):
    model, opt, eng = setup("rigl", device)
    x, y = data(device)
    scaler = torch.amp.GradScaler("cuda")
    ok_counts = ok_zeros = True
    for step in range(60):
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss_at(model, x, y, step, torch.float16)).backward()
        eng.step_optimizer(scaler=scaler)
        ok_counts &= counts_exact(eng)
        ok_zeros &= zeros_exact(eng)
    masks_on_gpu = all(m.device.type == "cuda" for m in eng.masks.values())
    res = {"counts_exact": ok_counts, "zeros_exact": ok_zeros, "masks_on_gpu": masks_on_gpu,
           "last_update_step": eng.last_update["step"], "overflow_steps": eng.overflow_steps,
           "final_scale": scaler.get_scale()}
    res["ok"] = ok_counts and ok_zeros and masks_on_gpu and res["last_update_step"] == 50 and eng.overflow_steps == 0
    return res


def snapshot(model, eng):
    return ({n: m.clone() for n, m in eng.masks.items()}, {k: v.clone() for k, v in model.state_dict().items()},
            {k: v.clone() for k, v in getattr(eng.method, "ema", {}).items()})


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def fp16_overflow(device, method):
    model, opt, eng = setup(method, device)
    x, y = data(device)
    scaler = torch.amp.GradScaler("cuda")
    for step in range(10):  # step 10 is an update step
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss_at(model, x, y, step, torch.float16)).backward()
        eng.step_optimizer(scaler=scaler)
    before, scale = snapshot(model, eng), scaler.get_scale()
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss_at(model, x, y, 10, torch.float16)).backward()
    model[0].weight.grad[0, 0] = float("inf")  # what an fp16 overflow leaves in a scaled gradient
    ran = eng.step_optimizer(scaler=scaler)
    after = snapshot(model, eng)
    res = {"optimizer_step_ran": ran, "scale_before": scale, "scale_after": scaler.get_scale(),
           "masks_unchanged": same(before[0], after[0]), "weights_unchanged": same(before[1], after[1]),
           "average_unchanged": same(before[2], after[2]), "has_average": bool(before[2]),
           "overflow_steps": eng.overflow_steps, "last_update": eng.last_update}
    for step in range(11, 21):  # the next update step (20) runs as usual
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss_at(model, x, y, step, torch.float16)).backward()
        eng.step_optimizer(scaler=scaler)
    finite = all(bool(torch.isfinite(v).all()) for v in getattr(eng.method, "ema", {}).values())
    res.update(next_update_step=eng.last_update["step"], average_finite=finite,
               counts_exact=counts_exact(eng), zeros_exact=zeros_exact(eng))
    res["last_update"] = None if res["last_update"] is None else res["last_update"]["step"]
    res["ok"] = (not ran and res["scale_after"] == scale / 2 and res["masks_unchanged"] and res["weights_unchanged"]
                 and res["average_unchanged"] and res["overflow_steps"] == 1 and res["last_update"] is None
                 and res["next_update_step"] == 20 and finite and res["counts_exact"] and res["zeros_exact"]
                 and (method != "snfs" or res["has_average"]))
    return res


def fp16_unscaled_average(device):
    """SNFS under GradScaler vs the same fp16-autocast steps with the unscaled gradients by hand."""
    runs = []
    for scaled in (True, False):
        model, opt, eng = setup("snfs", device)
        x, y = data(device)
        scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 10, growth_interval=10 ** 6)
        for step in range(8):
            opt.zero_grad(set_to_none=True)
            loss = loss_at(model, x, y, step, torch.float16)
            if scaled:
                scaler.scale(loss).backward()
                eng.step_optimizer(scaler=scaler)
            else:
                (loss * 2.0 ** 10).backward()  # the same scaled backward ...
                for p in model.parameters():
                    p.grad.mul_(2.0 ** -10)  # ... unscaled by hand (exact: a power of two)
                eng.step_optimizer()
        runs.append(eng.method.ema)
    equal = same(runs[0], runs[1])
    return {"average_equal": equal, "layers": len(runs[0]), "ok": equal and len(runs[0]) == 3}


def bf16_rigl(device):
    model, opt, eng = setup("rigl", device)
    x, y = data(device)
    ok_counts = ok_zeros = True
    for step in range(60):
        opt.zero_grad(set_to_none=True)
        loss_at(model, x, y, step, torch.bfloat16).backward()
        eng.step_optimizer()
        ok_counts &= counts_exact(eng)
        ok_zeros &= zeros_exact(eng)
    res = {"counts_exact": ok_counts, "zeros_exact": ok_zeros, "last_update_step": eng.last_update["step"],
           "overflow_steps": eng.overflow_steps}
    res["ok"] = ok_counts and ok_zeros and res["last_update_step"] == 50 and eng.overflow_steps == 0
    return res


def cli(amp):
    try:
        import sklearn  # noqa: F401  (the embedded digits data)
    except ImportError:
        return {"skipped": "scikit-learn not installed (the digits data needs it)", "ok": True}
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "sparsetrain", "train", "--out-dir", out, "--quiet", "--set", "train.steps=150",
               "--set", "train.eval_every=150", "--set", 'sparsity.options={"delta_t": 10}',
               "--set", "train.device=cuda", "--set", f"train.amp={amp}"]
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=os.environ.copy())
        res = {"exit": proc.returncode, "seconds": round(time.time() - t0, 1), "stdout": proc.stdout.strip()[-300:],
               "stderr": proc.stderr.strip()[-500:]}
        summaries = [os.path.join(r, f) for r, _, fs in os.walk(out) for f in fs if f == "summary.json"]
        if summaries:
            with open(summaries[0]) as f:
                s = json.load(f)
            res.update(test_accuracy=s["final"]["test"]["accuracy"], achieved_sparsity=s["achieved_sparsity"])
        res["ok"] = proc.returncode == 0 and res.get("test_accuracy", 0) > 0.8 and \
            abs(res.get("achieved_sparsity", 0) - 0.9) < 0.01
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    report = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    if not torch.cuda.is_available():
        report["ok"] = False
        report["error"] = "no CUDA device"
    else:
        report["device"] = torch.cuda.get_device_name(0)
        device = torch.device("cuda")
        checks = {"fp16_rigl": lambda: fp16_rigl(device),
                  "fp16_overflow_rigl": lambda: fp16_overflow(device, "rigl"),
                  "fp16_overflow_snfs": lambda: fp16_overflow(device, "snfs"),
                  "fp16_unscaled_average": lambda: fp16_unscaled_average(device),
                  "bf16_rigl": lambda: bf16_rigl(device),
                  "cli_fp16": lambda: cli("fp16"), "cli_bf16": lambda: cli("bf16")}
        for name, fn in checks.items():
            t0 = time.time()
            try:
                report[name] = fn()
            except Exception as e:  # report and go on: one failing check must not hide the others
                report[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            report[name]["seconds"] = round(time.time() - t0, 2)
            print(name, "ok" if report[name]["ok"] else "FAILED", flush=True)
        report["ok"] = all(report[name]["ok"] for name in checks)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1, default=str)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
