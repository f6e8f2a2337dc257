"""Sparse convolutions on CPU: per-layer kernels, CNN training steps and inference, memory.

Regenerate the conv tables of docs/performance.md:

    python benchmarks/sparse_conv.py --out docs/perf/sparse_conv.json

Protocol
--------
* float32, torch threads = 2, synthetic inputs. Every timing compares configurations living in ONE
  process, run in interleaved rounds (rotating order); we report the median per configuration and,
  for ratios, the median and min–max over rounds of (reference time / configuration time) within
  the same round. ``os.getloadavg()`` is recorded before every round (the machine is shared).
* Per layer (``layers``): C→C convs, 3×3 (padding 1) and 1×1, training step (forward + both
  gradients) at batch 16 and inference at batch 1; dense ``F.conv2d`` vs our ``SparseConv2d`` on
  its kernels ("sp": sparseprop's direct kernels; "mkl": unfold + MKL CSR; "native": unfold + this
  package's C kernels, where built) vs sparseprop's own
  ``SparseConv2d`` module (its kernel ceiling: the raw kernels behind one thin autograd function).
* Models (``models``): RigL (ERK) on the masked-dense engine ("masked") and on the sparse storage
  ("sparse": the automatic per-layer policy; "sparse-all": every Linear / Conv2d (groups = 1)
  compressed, the model built sparse from the start) vs dense and vs "sparseprop": the dense
  model with every conv the policy compresses replaced by sparseprop's own SparseConv2d (static
  masks, no engine), and "sparse-native": the automatic policy with ``conv_kernel="native"``
  (every conv the policy's density and size rules admit, on unfold + the native kernels).
  Regular training steps (ΔT = 100: no update during timing) and inference (eval mode, no
  gradients). ``--models`` and ``--phases`` pick jobs; with ``--merge`` their rows are added to
  (or replace those of) an existing results file.
* Profile (``profile``): torch.profiler over 3 regular WRN-22-2 training steps (batch 128, ERK),
  dense and the sparse storage at 95 / 99 %, inclusive CPU time of the sparse conv regions, dense
  convolutions, batch norm, ReLU and the optimizer step; the rest of the wall time is "everything
  else". ``--parts profile --merge`` adds it to an existing results file (``--merge`` keeps the
  other parts and rows).
* Memory (``memory``): each configuration in a fresh subprocess; construction peak = VmHWM after
  building model + optimizer + engine minus VmRSS before; training peak after 3 steps (one a
  topology update) likewise; persistent bytes from the live tensors (weights, indices, optimizer).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from perf_common import profiled_steps, read_json, select_tables  # noqa: E402
from sparse_backend import Runner, _dense_step, _engine_step, _reset_peak, _status_kb  # noqa: E402

from sparsetrain.data.base import DataInfo  # noqa: E402
from sparsetrain.models import build_model  # noqa: E402
from sparsetrain.sparsity.storage.conv import SparseConv2d  # noqa: E402

LAYERS = [(32, 32, 3), (64, 56, 3), (64, 56, 1), (128, 28, 3), (128, 28, 1), (256, 14, 3), (256, 14, 1), (512, 8, 3),
          (512, 8, 1)]
INFOS = {"lenet5": DataInfo("fashion_mnist", (1, 28, 28), 10), "wrn-22-2": DataInfo("cifar10", (3, 32, 32), 10),
         "resnet18": DataInfo("cifar10", (3, 32, 32), 10), "resnet50": DataInfo("imagenet", (3, 224, 224), 1000)}


# --- interleaved timing ----------------------------------------------------------------------------
def interleave(fns: Dict[str, Callable[[], None]], rounds: int, ref: str) -> dict:
    """Median ms per configuration and ratio ref/config (median, min, max over rounds)."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    loads = []
    names = list(fns)
    for r in range(rounds):
        loads.append(round(os.getloadavg()[0], 2))
        for k in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    out = {"load": loads}
    for k, v in times.items():
        ratios = [a / b for a, b in zip(times[ref], v)]
        out[k] = {"ms": 1e3 * statistics.median(v), "ratio": statistics.median(ratios),
                  "ratio_min": min(ratios), "ratio_max": max(ratios)}
    return out


# --- per layer -------------------------------------------------------------------------------------
def _masked_conv(c: int, k: int, density: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(c, c, k, padding=k // 2, bias=False)
    with torch.no_grad():
        conv.weight.mul_(torch.rand(conv.weight.shape, generator=g) < density)
    return conv


def _train_fn(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    x = x.clone().requires_grad_()

    def run() -> None:
        y = module(x)
        y.backward(torch.ones_like(y))
        for p in module.parameters():
            p.grad = None
    return run


def _infer_fn(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            module(x)
    return run


def layer_variants(c: int, k: int, density: float) -> Dict[str, nn.Module]:
    from sparseprop.modules import SparseConv2d as SPConv
    conv = _masked_conv(c, k, density)
    out = {"dense": conv}
    from sparsetrain.sparsity.storage.csr import native
    for kernel in ("sp", "mkl", "native"):
        if kernel == "native" and not native.available():
            continue
        layer = SparseConv2d.from_dense(conv)
        layer.kernel = {"sp": "sparseprop"}.get(kernel, kernel)
        out[kernel] = layer
    out["sparseprop"] = SPConv.from_dense(conv)
    return out


def layer_table(rounds: int, densities=(0.05, 0.01), train_batch: int = 16) -> dict:
    out = {}
    for c, hw, k in LAYERS:
        for d in densities:
            mods = layer_variants(c, k, d)
            xt, xi = torch.randn(train_batch, c, hw, hw), torch.randn(1, c, hw, hw)
            key = f"{c}ch {hw}x{hw} {k}x{k} @{d}"
            out[key] = {"train": interleave({n: _train_fn(m, xt) for n, m in mods.items()}, rounds, "dense"),
                        "infer": interleave({n: _infer_fn(m, xi) for n, m in mods.items()}, rounds, "dense")}
            print(key, _brief(out[key]), flush=True)
    return out


def _brief(r: dict) -> str:
    return " | ".join(f"{phase}: " + ", ".join(f"{k} {v['ratio']:.2f}x" for k, v in r[phase].items() if k != "load")
                      for phase in ("train", "infer"))


# --- models ----------------------------------------------------------------------------------------
def model_runner(name: str, sparsity: float, config: str, x, y, seed: int = 0, dist: str = "erk") -> Runner:
    """Model + optimizer (+ engine) of one configuration (RigL, ΔT = 100; uniform keeps the first
    layer dense, as in the paper)."""
    from sparsetrain.sparsity.backend import SparseEngine
    from sparsetrain.sparsity.engine import SparsityEngine
    from sparsetrain.sparsity.storage import build_sparse

    torch.manual_seed(seed)
    factory = lambda: build_model(name, INFOS[name])  # noqa: E731
    args = dict(total_steps=10 ** 6, delta_t=100)
    if config == "sparse-all":
        model = build_sparse(factory, sparsity, dist, init="cnn", seed=seed)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        engine = SparsityEngine(model, opt, "rigl", **args)
        return Runner(config, model, opt, _engine_step(model, opt, engine, x, y), engine)
    model = factory()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if config == "dense":
        return Runner(config, model, opt, _dense_step(model, opt, x, y))
    if config == "masked":
        engine = SparsityEngine(model, opt, "rigl", sparsity=sparsity, distribution=dist, **args)
        return Runner(config, model, opt, _engine_step(model, opt, engine, x, y), engine)
    kernel = {"conv_kernel": "native"} if config == "sparse-native" else {}
    engine = SparseEngine(model, opt, "rigl", sparsity=sparsity, distribution=dist, **args, **kernel)
    if config in ("sparse", "sparse-native"):
        return Runner(config, model, engine.optimizer, _engine_step(model, engine.optimizer, engine, x, y), engine)
    return _sparseprop_runner(model, engine, x, y)


def _sparseprop_runner(model: nn.Module, engine, x, y) -> Runner:
    """The engine's compressed convs swapped for sparseprop's own SparseConv2d (static masks)."""
    from sparseprop.modules import SparseConv2d as SPConv
    for name, layer in list(engine.layers.items()):
        if isinstance(layer, SparseConv2d) and layer.uses_sparseprop():
            parent, _, child = name[: -len(".weight")].rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, SPConv.from_dense(layer.to_conv()))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return Runner("sparseprop", model, opt, _dense_step(model, opt, x, y))


def _inputs(name: str, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    info = INFOS[name]
    return torch.randn(batch, *info.input_shape, generator=g), torch.randint(0, info.num_classes, (batch,), generator=g)


def model_table(jobs, rounds: int) -> dict:
    from sparsetrain.sparsity.storage.csr import native
    out = {}
    for name, batch, sparsity, phase, dist in jobs:
        x, y = _inputs(name, batch)
        configs = ("dense", "masked", "sparse", "sparse-all", "sparseprop") + (("sparse-native",) if native.available() else ())
        runners = {c: model_runner(name, sparsity, c, x, y, dist=dist) for c in configs}
        if phase == "infer":
            for r in runners.values():
                r.model.eval()
            fns = {c: _infer_fn(r.model, x) for c, r in runners.items()}
        else:
            fns = {c: r.step for c, r in runners.items()}
        key = f"{name} {phase} batch {batch} {dist} @{sparsity}"
        out[key] = interleave(fns, rounds, "dense")
        out[key]["compressed"] = {c: len(r.extra.layers) for c, r in runners.items() if r.extra is not None}
        print(key, ", ".join(f"{k} {v['ratio']:.2f}x ({v['ratio_min']:.2f}-{v['ratio_max']:.2f})"
                             for k, v in out[key].items() if k not in ("load", "compressed")), flush=True)
        del runners, fns
    return out


# --- profile ---------------------------------------------------------------------------------------
#: (label, profiler keys whose inclusive CPU time it sums); the keys never nest inside each other
PROFILE_CATEGORIES = (
    ("compressed convs: sparse kernels and their layout copies", ("sparse_conv2d.forward", "sparse_conv2d.grad_input",
                                                                  "sparse_conv2d.grad_weight",
                                                                  "sparse_conv2d.sparseprop_backward")),
    ("dense convs: forward", ("aten::convolution",)),
    ("dense convs: backward", ("aten::convolution_backward",)),
    ("batch norm: forward + backward", ("aten::batch_norm", "aten::native_batch_norm_backward")),
    ("ReLU: forward + backward", ("aten::relu_", "aten::relu", "aten::threshold_backward")),
    ("optimizer step", ("Optimizer.step#SGD.step",)),
)


def profile_model(name: str, batch: int, sparsity: float, config: str, dist: str = "erk", steps: int = 3) -> dict:
    """Milliseconds per regular training step by category (torch.profiler, inclusive CPU time of
    the keys of PROFILE_CATEGORIES; "everything else" is the wall time left: the rest of autograd,
    the engine's hooks, adds, pooling, the loss, Python)."""
    x, y = _inputs(name, batch)
    runner = model_runner(name, sparsity, config, x, y, dist=dist)
    wall, by_key = profiled_steps(runner.step, 2, steps)
    rows = {label: sum(by_key.get(k, 0.0) for k in keys) for label, keys in PROFILE_CATEGORIES}
    rows["everything else"] = wall - sum(rows.values())
    convs = [m for m in runner.model.modules() if isinstance(m, (nn.Conv2d, SparseConv2d))]
    return {"wall_ms": wall, "categories": rows, "convs": len(convs),
            "compressed_convs": sum(isinstance(m, SparseConv2d) for m in convs)}


def profile_table(jobs) -> dict:
    out = {}
    for name, batch, sparsity, config, dist in jobs:
        key = f"{name} batch {batch} {dist} @{sparsity} {config}"
        out[key] = profile_model(name, batch, sparsity, config, dist)
        print(key, json.dumps(out[key]), flush=True)
    return out


# --- memory ----------------------------------------------------------------------------------------
def persistent_bytes(runner: Runner) -> int:
    """Weights, index buffers and optimizer state of the live model (each storage once)."""
    seen, total = set(), 0
    tensors = list(runner.model.parameters()) + list(runner.model.buffers())
    for store in getattr(runner.extra, "stores", {}).values():   # masked-dense masks (and their float copy)
        if not store.compressed:
            tensors += [store.mask] + ([store._multiplier] if store._multiplier is not None else [])
    for state in runner.optimizer.state.values():
        tensors += [v for v in state.values() if torch.is_tensor(v)]
    for t in tensors:
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def child(spec: str) -> None:
    name, batch, sparsity, config = spec.split(":")
    torch.set_num_threads(2)
    x, y = _inputs(name, int(batch))
    warm = model_runner("lenet5", 0.9, config, *_inputs("lenet5", 8))
    warm.step()
    del warm
    _reset_peak()
    base = _status_kb("VmRSS")
    runner = model_runner(name, float(sparsity), config, x, y)
    built = _status_kb("VmHWM")
    _reset_peak()
    runner.step()
    if runner.extra is not None:
        runner.extra.update_masks(0.3)   # one topology update (RigL's grow scores need the capture)
    runner.step(), runner.step()
    peak = _status_kb("VmHWM")
    report = runner.extra.density_report() if runner.extra is not None else {}
    print(json.dumps({"build_peak_mb": (built - base) / 1024, "train_peak_mb": (peak - base) / 1024,
                      "persistent_mb": persistent_bytes(runner) / 2 ** 20,
                      "params": report.get("model_params"), "nonzero_params": report.get("model_nonzero_params")}))


def memory_table(jobs) -> dict:
    out = {}
    for name, batch, sparsity in jobs:
        for config in ("dense", "masked", "sparse", "sparse-all"):
            res = subprocess.run([sys.executable, __file__, "--child", f"{name}:{batch}:{sparsity}:{config}"],
                                 capture_output=True, text=True)
            lines = res.stdout.strip().splitlines()
            out[f"{name} batch {batch} @{sparsity} {config}"] = json.loads(lines[-1]) if res.returncode == 0 \
                else {"error": res.stderr[-300:]}
            print(name, sparsity, config, out[f"{name} batch {batch} @{sparsity} {config}"], flush=True)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/perf/sparse_conv.json")
    p.add_argument("--parts", default="layers,models,memory,profile")
    p.add_argument("--merge", action="store_true", help="keep the other parts and rows of an existing --out file")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--models", default="lenet5,wrn-22-2,resnet18,resnet50", help="models of the models and memory parts")
    p.add_argument("--phases", default="train,infer", help="phases of the models part")
    p.add_argument("--child")
    p.add_argument("--report", "--markdown", dest="report", metavar="JSON",
                   help="print the tables of a result JSON and exit")
    p.add_argument("--table", metavar="N|N-M", help="with --report: print only the N-th table (or tables N to M)")
    a = p.parse_args(argv)
    if a.child:
        return child(a.child)
    if a.report:
        text = report(read_json(a.report))
        return print(select_tables(text, a.table) if a.table else text)
    torch.set_num_threads(2)
    res = {"torch": torch.__version__, "threads": 2, "cpus": os.cpu_count(), "started": time.strftime("%H:%M UTC")}
    parts, models = a.parts.split(","), a.models.split(",")
    if "layers" in parts:
        res["layers"] = layer_table(a.rounds)
    if "models" in parts:
        jobs = [("wrn-22-2", 128, s, "train", d) for d in ("erk", "uniform") for s in (0.95, 0.99)] + \
               [("wrn-22-2", 128, 0.9, "train", "erk")] + \
               [("resnet50", 1, s, "infer", d) for d in ("erk", "uniform") for s in (0.95, 0.99)] + \
               [("resnet50", 32, 0.95, "infer", "erk")] + \
               [("resnet18", 128, s, "train", "erk") for s in (0.9, 0.95, 0.99)] + \
               [("lenet5", 128, 0.95, "train", "erk")] + \
               [(m, 128, s, "infer", "erk") for m in ("wrn-22-2", "resnet18") for s in (0.95, 0.99)] + \
               [("lenet5", 128, 0.95, "infer", "erk")]
        res["models"] = model_table([j for j in jobs if j[0] in models and j[3] in a.phases.split(",")],
                                    a.rounds)
    if "memory" in parts:
        mem = [("wrn-22-2", 128, 0.95), ("wrn-22-2", 128, 0.99), ("resnet50", 1, 0.95), ("resnet18", 128, 0.95),
               ("lenet5", 128, 0.95)]
        res["memory"] = memory_table([j for j in mem if j[0] in models])
    if "profile" in parts:
        res["profile"] = profile_table([("wrn-22-2", 128, 0.95, "dense", "erk"), ("wrn-22-2", 128, 0.95, "sparse", "erk"),
                                        ("wrn-22-2", 128, 0.99, "sparse", "erk")])
    if a.merge and os.path.exists(a.out):   # this run's rows replace theirs in an existing results file
        with open(a.out) as f:
            old = json.load(f)
        res = {**old, **{k: {**old.get(k, {}), **v} for k, v in res.items() if k in parts},
               f"{'+'.join(parts)} started": res["started"]}
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)



# --- markdown ---------------------------------------------------------------------------------------
def report(res: dict) -> str:
    """The tables of docs/performance.md (per layer, models, memory) from a results JSON."""
    tables = {"layers": layers_md, "models": models_md, "memory": memory_md, "profile": profile_md}
    return "\n\n".join(fn(res[k]) for k, fn in tables.items() if k in res)


def _ratio(v: dict) -> str:
    return f"{v['ratio']:.2f}× ({v['ratio_min']:.2f}–{v['ratio_max']:.2f})"


def layers_md(res: dict) -> str:
    nat = any("native" in r["train"] for r in res.values())  # files measured before the native kernels lack it
    rows = ["| layer (C→C, map, kernel) @density | phase | dense ms | ours: sp | ours: mkl | "
            + ("ours: native | " if nat else "") + "sparseprop's own | load |",
            "|---|---|---:|---:|---:|" + ("---:|" if nat else "") + "---:|---|"]
    for key, r in res.items():
        for phase in ("train", "infer"):
            p = r[phase]
            native = f"{_ratio(p['native'])} | " if nat else ""
            rows.append(f"| {key} | {phase} | {p['dense']['ms']:.1f} | {_ratio(p['sp'])} | {_ratio(p['mkl'])} | "
                        f"{native}{_ratio(p['sparseprop'])} | {min(p['load']):.1f}–{max(p['load']):.1f} |")
    return "\n".join(rows)


def models_md(res: dict) -> str:
    configs = ("masked", "sparse", "sparse-all", "sparseprop")
    if any("sparse-native" in r for r in res.values()):  # files measured before the native kernels lack it
        configs += ("sparse-native",)
    rows = ["| job | dense ms | " + " | ".join(configs) + " | load |", "|---|---:|" + "---:|" * len(configs) + "---|"]
    for key, r in res.items():
        rows.append(f"| {key} | {r['dense']['ms']:.0f} | " + " | ".join(_ratio(r[c]) for c in configs) +
                    f" | {min(r['load']):.1f}–{max(r['load']):.1f} |")
    return "\n".join(rows)


def memory_md(res: dict) -> str:
    rows = ["| model @sparsity config | construction peak MB | training peak MB | persistent MB | nonzero share |",
            "|---|---:|---:|---:|---:|"]
    for key, r in res.items():
        share = f"{r['nonzero_params'] / r['params']:.3f}" if r.get("params") else "—"
        rows.append(f"| {key} | {r.get('build_peak_mb', 0):.1f} | {r.get('train_peak_mb', 0):.1f} | "
                    f"{r.get('persistent_mb', 0):.2f} | {share} |" if "error" not in r else f"| {key} | error | | | |")
    return "\n".join(rows)


def profile_md(res: dict) -> str:
    keys = list(res)
    rows = ["| where the time goes (ms per training step) | " + " | ".join(keys) + " |",
            "|---|" + "---:|" * len(keys)]
    labels = [label for label, _ in PROFILE_CATEGORIES] + ["everything else"]
    for label in labels:
        rows.append(f"| {label} | " + " | ".join(
            f"{res[k]['categories'][label]:.0f} ({100 * res[k]['categories'][label] / res[k]['wall_ms']:.0f} %)"
            for k in keys) + " |")
    rows.append("| **wall time per step** | " + " | ".join(f"**{res[k]['wall_ms']:.0f}**" for k in keys) + " |")
    rows.append("| convs compressed | " + " | ".join(f"{res[k]['compressed_convs']} of {res[k]['convs']}"
                                                   for k in keys) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()

