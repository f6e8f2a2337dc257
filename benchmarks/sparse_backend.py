"""Training-step and inference speed, and memory: dense vs masked-dense vs truly sparse vs rigl-torch.

Regenerate the tables of docs/performance.md (about 15 minutes on 2 cores):

    python benchmarks/sparse_backend.py --out docs/perf/sparse_backend.json

Protocol
--------
* MLPs 784-1024-1024-10 ("small") and 1024-4096-4096-4096-10 ("wide"), batch 128, float32,
  SGD (lr 0.01, momentum 0.9), torch threads = 2, synthetic inputs (speed does not depend on data).
* Sparsity is uniform over all Linear layers (no dense first layer). The masked-dense and sparse
  backends run RigL through sparsetrain's engine; rigl-torch (PyPI ``rigl-torch``) runs its
  RigLScheduler (uniform: it keeps the first layer dense; its compute is dense anyway).
  "sparse" uses the automatic per-layer rule (density <= 0.1 and >= 65,536 weights: the 10-way
  output layers stay masked-dense) with the default kernel ("auto": the native C kernels where
  built) and caches Wᵀ's structure; "sparse-mkl" is the same on torch's MKL products; "sparse-lean" compresses every
  layer and rebuilds Wᵀ's structure in each backward pass (less memory, slower backward);
  "sparse-sp" is the automatic rule on the sparseprop package's kernels (``kernel="sparseprop"``,
  which need no Wᵀ structure; skipped when sparseprop is not installed); "sparse-built" is
  "sparse" with the model built sparse from the start (``build_sparse``: the layers the policy
  compresses are never dense), what ``sparsetrain train`` does.
* Timing (``time_group``): for each (model, sparsity) every backend is built twice, with
  ``zero_grad(set_to_none=False)`` (gradient buffers reused) and ``set_to_none=True``; all live in
  ONE process and run in interleaved rounds (3 steps + 3 inferences each, rotating order) so
  machine noise hits all of them alike, and each backend is reported at its faster setting.
  ΔT = 5 while timing (17 rounds: 10 update samples); regular steps, update steps and the step
  right after an update are kept apart; "amortised" = regular + ((update − regular) + (after −
  regular))/100, the cost at the paper's ΔT = 100. Medians with min/max, and dense ÷ sparse per
  round (paired). Every round records the load average and the CPU share used by other processes
  (flagged noisy above 25 %). Results are written after every group; ``--append`` adds groups to
  an existing file, ``--compare BEFORE AFTER`` prints a before/after table.
* Memory: each configuration is also built in a fresh subprocess; after construction the kernel's
  peak-RSS counter is reset (``/proc/self/clear_refs``) and 4 training steps (one a topology update)
  are run; "peak RSS" is VmHWM minus the RSS before the model was built (interpreter, torch, data),
  during construction (model, optimizer, engine) and during the 4 steps. ``--memory-only`` measures
  just this table (RSS does not depend on the machine's load).
  "Persistent" bytes are counted from the live tensors after training (parameters, index buffers,
  optimizer state, engine masks; gradients listed apart), each storage counted once.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
from torch import nn
from torch.profiler import record_function

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from perf_common import profiled_steps, select_tables, write_json  # noqa: E402

MODELS = {"small": [784, 1024, 1024, 10], "wide": [1024, 4096, 4096, 4096, 10],
          "tiny": [784, 256, 256, 10]}  # tiny: warm-up only (loads kernels before the RSS baseline)
BACKENDS = ("dense", "masked", "sparse", "sparse-built", "sparse-mkl", "sparse-lean", "sparse-sp", "rigl-torch")
BATCH, DELTA_T, PAPER_DELTA_T = 128, 10, 100


def mlp(sizes: List[int], seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: List[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def make_optimizer(model: nn.Module, kind: str) -> torch.optim.Optimizer:
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=1e-3)
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


@dataclass
class Runner:
    """One configuration: ``step()`` runs a training iteration and returns whether it was a
    topology-update step; ``infer()`` runs a no-grad forward pass."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[], bool]
    extra: object = None

    def infer(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            self.model(x)


def _engine_step(model, opt, engine, x, y, set_to_none: bool = True) -> Callable[[], bool]:
    def step() -> bool:
        update = engine.method.is_update_step(engine.step)
        opt.zero_grad(set_to_none=set_to_none)
        nn.functional.cross_entropy(model(x), y).backward()
        with record_function("engine_hooks"):
            run = engine.after_backward()
        if run:
            opt.step()
        with record_function("engine_hooks"):
            engine.after_step()
        return update
    return step


def _dense_step(model, opt, x, y, set_to_none: bool = True) -> Callable[[], bool]:
    def step() -> bool:
        opt.zero_grad(set_to_none=set_to_none)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        return False
    return step


def _rigl_torch_step(model, opt, scheduler, x, y, set_to_none: bool = True) -> Callable[[], bool]:
    def step() -> bool:
        opt.zero_grad(set_to_none=set_to_none)
        nn.functional.cross_entropy(model(x), y).backward()
        regular = scheduler()
        if regular:
            opt.step()
        return not regular
    return step


def build(model_name: str, sparsity: float, backend: str, opt_kind: str, x, y, delta_t: int = DELTA_T,
          set_to_none: bool = True) -> Runner:
    """Model + optimizer (+ engine) of one configuration; ``set_to_none`` is the ``zero_grad``
    setting (False reuses the gradient buffers from step to step)."""
    from sparsetrain.sparsity.backend import SparseEngine
    from sparsetrain.sparsity.engine import SparsityEngine

    engine_args = dict(sparsity=sparsity, distribution="uniform", dense_first=False,
                       total_steps=10 ** 6, delta_t=delta_t)
    if backend == "sparse-built":
        # "sparse" built sparse from the start: the layers its policy compresses never exist densely
        from sparsetrain.sparsity.storage import BackendPolicy, build_sparse
        policy = BackendPolicy()
        model = build_sparse(lambda: mlp(MODELS[model_name]), sparsity, "uniform", dense_first=False, policy=policy)
        opt = make_optimizer(model, opt_kind)
        engine = SparsityEngine(model, opt, "rigl", storage=policy, **engine_args)
        return Runner(backend, model, opt, _engine_step(model, opt, engine, x, y, set_to_none), engine)
    model = mlp(MODELS[model_name])
    opt = make_optimizer(model, opt_kind)
    if backend == "dense":
        return Runner(backend, model, opt, _dense_step(model, opt, x, y, set_to_none))
    if backend == "masked":
        engine = SparsityEngine(model, opt, "rigl", **engine_args)
        return Runner(backend, model, opt, _engine_step(model, opt, engine, x, y, set_to_none), engine)
    if backend.startswith("sparse"):
        # sparse: automatic policy, Wᵀ cached; sparse-lean: every layer compressed, Wᵀ rebuilt per step;
        # sparse-sp: automatic policy on sparseprop's kernels, which need no Wᵀ
        lean = {"sparse-lean": dict(min_size=0, cache_transpose=False),
                "sparse-mkl": dict(kernel="mkl"),
                "sparse-sp": dict(cache_transpose=False, kernel="sparseprop")}.get(backend, {})
        engine = SparseEngine(model, opt, "rigl", **engine_args, **lean)
        return Runner(backend, model, engine.optimizer, _engine_step(model, engine.optimizer, engine, x, y, set_to_none), engine)
    from rigl_torch.RigL import RigLScheduler
    sched = RigLScheduler(model, opt, dense_allocation=1 - sparsity, T_end=10 ** 6, delta=delta_t,
                          ignore_linear_layers=False, sparsity_distribution="uniform")
    return Runner(backend, model, opt, _rigl_torch_step(model, opt, sched, x, y, set_to_none), sched)


def inputs(model_name: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sizes = MODELS[model_name]
    return torch.randn(BATCH, sizes[0], generator=g), torch.randint(0, sizes[-1], (BATCH,), generator=g)


# --- shared machine --------------------------------------------------------------------------------
def cpu_idle(seconds: float = 1.0) -> float:
    """Fraction of CPU time idle over the next ``seconds`` (all cores, from /proc/stat)."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)
    i0, t0 = sample()
    time.sleep(seconds)
    i1, t1 = sample()
    return (i1 - i0) / max(1, t1 - t0)


def wait_for_idle(min_idle: float, timeout: float) -> float:
    """Block until the machine is at least ``min_idle`` idle (others' jobs share these cores), or
    ``timeout`` seconds pass; returns the idle fraction seen last. ``min_idle`` 0 disables."""
    deadline, idle = time.time() + timeout, 1.0
    while min_idle > 0:
        idle = cpu_idle()
        if idle >= min_idle or time.time() > deadline:
            break
    return idle


# --- timing --------------------------------------------------------------------------------------
ZERO_GRAD = {"keep": False, "none": True}   # zero_grad(set_to_none=...): reuse buffers, or fresh ones
NOISY_FOREIGN = 0.25                         # a round is flagged when others used > 25 % of the CPUs


def _cpu_ticks() -> tuple:
    """(busy, total) jiffies of the whole machine since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)


class RoundLoad:
    """Load of the machine over one timing round: the 1-min load average before and after, and the
    share of all CPUs' time used by *other* processes (machine busy time minus this process's)."""

    def __enter__(self):
        self.load0, self.ticks0, self.own0 = os.getloadavg()[0], _cpu_ticks(), _own_cpu()
        return self

    def __exit__(self, *exc):
        busy1, total1 = _cpu_ticks()
        hz = os.sysconf("SC_CLK_TCK")
        total = max(1, total1 - self.ticks0[1])
        own = (_own_cpu() - self.own0) * hz
        self.record = {"loadavg_before": self.load0, "loadavg_after": os.getloadavg()[0],
                       "foreign_cpu_share": max(0.0, (busy1 - self.ticks0[0] - own) / total)}
        self.record["noisy"] = self.record["foreign_cpu_share"] > NOISY_FOREIGN
        return False


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def time_group(model_name: str, sparsity: float, backends, opt_kind: str, rounds: int, per_round: int,
               min_idle: float = 0.0, zero_grad=("keep", "none"), delta_t: int = 5) -> dict:
    """Interleaved timing of every (backend, zero_grad setting) for one (model, sparsity) in this
    process. ΔT = ``delta_t``: steps are told apart as regular, update and the step right after an
    update (it rebuilds structures derived from the new pattern, e.g. Wᵀ's), so the amortised cost
    at ΔT = 100 counts both extras. Per round, every runner does ``per_round`` steps and as many
    inferences, in rotating order; the machine's load during the round is recorded."""
    x, y = inputs(model_name)
    runners = [build(model_name, sparsity, b, opt_kind, x, y, delta_t, set_to_none=ZERO_GRAD[z])
               for b in backends for z in zero_grad]
    names = [f"{b}/{z}" for b in backends for z in zero_grad]
    for r in runners:                                      # warm-up: allocator, MKL handles
        r.step(), r.step(), r.infer(x)
    kinds = ("regular", "update", "after_update")
    raw = {n: {**{k: [] for k in kinds}, "infer": [], "round_regular": []} for n in names}
    after = {n: False for n in names}
    loads = []
    for k in range(rounds):
        wait_for_idle(min_idle, timeout=20)
        shift = k % len(runners)
        with RoundLoad() as load:
            for name, r in list(zip(names, runners))[shift:] + list(zip(names, runners))[:shift]:
                mine = []
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    update = r.step()
                    dt = time.perf_counter() - t0
                    kind = "update" if update else "after_update" if after[name] else "regular"
                    raw[name][kind].append(dt)
                    mine += [dt] if kind == "regular" else []
                    after[name] = update
                raw[name]["round_regular"].append(statistics.median(mine) if mine else None)
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    r.infer(x)
                    raw[name]["infer"].append(time.perf_counter() - t0)
        loads.append(load.record)
    out = {"delta_t": delta_t, "rounds": loads, "runs": {n: summarise(raw[n]) for n in names}}
    out["chosen"] = choose_settings(out["runs"], backends, zero_grad)
    out.update({b: out["runs"][n] for b, n in out["chosen"].items()})
    return out


def choose_settings(runs: Dict[str, dict], backends, zero_grad) -> Dict[str, str]:
    """Each backend at its faster zero_grad setting (lower median regular step): run names."""
    return {b: min((f"{b}/{z}" for z in zero_grad), key=lambda n: runs[n]["step_ms"]) for b in backends}


def _stats(v: List[float]) -> dict:
    return {"median": 1e3 * statistics.median(v), "min": 1e3 * min(v), "max": 1e3 * max(v), "n": len(v)} if v else None


def summarise(raw: Dict[str, List]) -> dict:
    reg = statistics.median(raw["regular"])
    upd = statistics.median(raw["update"]) if raw["update"] else reg
    post = statistics.median(raw["after_update"]) if raw["after_update"] else reg
    return {"step_ms": 1e3 * reg, "update_step_ms": 1e3 * upd if raw["update"] else None,
            "after_update_ms": 1e3 * post if raw["after_update"] else None,
            "amortised_ms": 1e3 * (reg + (upd - reg + post - reg) / PAPER_DELTA_T),
            "infer_ms": 1e3 * statistics.median(raw["infer"]),
            "regular": _stats(raw["regular"]), "update": _stats(raw["update"]),
            "after_update": _stats(raw["after_update"]), "infer": _stats(raw["infer"]),
            "round_regular_ms": [None if t is None else 1e3 * t for t in raw["round_regular"]],
            "n_regular": len(raw["regular"]), "n_update": len(raw["update"])}


def paired_ratios(group: dict, backend: str) -> Optional[dict]:
    """dense ÷ ``backend`` regular-step time per round (both at their chosen setting): the paired
    estimate, robust to load that changes between rounds; median, min, max, and the median over
    the rounds not flagged noisy."""
    if backend not in group.get("chosen", {}):
        return None
    d = group["runs"][group["chosen"]["dense"]]["round_regular_ms"]
    s = group["runs"][group["chosen"][backend]]["round_regular_ms"]
    r = [a / b for a, b in zip(d, s) if a and b]
    quiet = [a / b for a, b, load in zip(d, s, group["rounds"]) if a and b and not load["noisy"]]
    return {"median": statistics.median(r), "min": min(r), "max": max(r),
            "quiet_median": statistics.median(quiet) if quiet else None, "n": len(r), "n_quiet": len(quiet)}


# --- memory (run in a child process per configuration) -----------------------------------------
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def _reset_peak() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def tensor_bytes(runner: Runner) -> Dict[str, int]:
    """Bytes of live tensors by role; every storage counted once."""
    seen, out = set(), {"weights": 0, "indices": 0, "optimizer": 0, "masks": 0, "grads": 0}

    def add(role: str, t: Optional[torch.Tensor]) -> None:
        if t is None or not torch.is_tensor(t):
            return
        if t.layout != torch.strided:
            for part in ((t.crow_indices(), t.col_indices(), t.values()) if t.layout == torch.sparse_csr
                         else (t._indices(), t._values())):
                add(role, part)
            return
        s = t.untyped_storage()
        if s.data_ptr() not in seen and s.nbytes() > 0:
            seen.add(s.data_ptr())
            out[role] += s.nbytes()

    for p in runner.model.parameters():
        add("weights", p)
    for b in runner.model.buffers():
        add("indices", b)
    for m in runner.model.modules():                      # SparseLinear's cached Wᵀ structure
        for t in (getattr(m, "_transposed", None) or (None, ()))[1]:
            add("indices", t)
    for state in runner.optimizer.state.values():
        for v in state.values():
            add("optimizer", v)
    masks = getattr(runner.extra, "masks", None) or getattr(runner.extra, "backward_masks", None) or []
    for m in (masks.values() if isinstance(masks, dict) else masks):
        add("masks", m)
    for hook in getattr(runner.extra, "backward_hook_objects", None) or []:
        add("masks", getattr(hook, "dense_grad", None))
    for p in runner.model.parameters():
        add("grads", p.grad)
    return out


def active_share(model_name: str, sparsity: float, opt_kind: str) -> Dict[str, float]:
    """Bytes of weights + optimizer state if only the active weights were stored (no indices)."""
    from sparsetrain.sparsity.topk import count_active
    sizes = MODELS[model_name]
    n_state = 2 if opt_kind == "adam" else 1
    active = dense = 0
    for a, b in zip(sizes[:-1], sizes[1:]):
        active += count_active(a * b, 1 - sparsity) + b    # weight at its density, bias dense
        dense += a * b + b
    return {"active_params": active, "dense_params": dense,
            "share_bytes": 4 * active * (1 + n_state), "dense_bytes": 4 * dense * (1 + n_state)}


def child(spec: str) -> None:
    """Entry of the memory subprocess: prints one JSON line."""
    model_name, sparsity, backend, opt_kind = spec.split(":")
    torch.set_num_threads(2)
    warm = build("tiny", float(sparsity), backend, opt_kind, *inputs("tiny"), delta_t=2)
    for _ in range(4):                                     # same code paths, incl. an update
        warm.step()
    del warm
    x, y = inputs(model_name)
    _reset_peak()
    base_kb = _status_kb("VmRSS")
    runner = build(model_name, float(sparsity), backend, opt_kind, x, y, delta_t=2)
    built_kb = _status_kb("VmHWM")
    _reset_peak()
    for _ in range(4):                                     # steps 0..3; step 2 updates the topology
        runner.step()
    peak_kb = _status_kb("VmHWM")
    print(json.dumps({"base_mb": base_kb / 1024, "build_peak_mb": (built_kb - base_kb) / 1024,
                      "train_peak_mb": (peak_kb - base_kb) / 1024, "bytes": tensor_bytes(runner)}))


def memory_only(args) -> None:
    """``--memory-only``: the memory table alone, written to ``--out``."""
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
               "command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
               "memory": {}}
    for m in args.models.split(","):
        for s in map(float, filter(None, args.sparsities.split(","))):
            for opt_kind in filter(None, args.memory.split(",")):
                results["memory"][f"{m}@{s}/{opt_kind}"] = {
                    "share": active_share(m, s, opt_kind),
                    **{b: measure_memory(m, s, b, opt_kind) for b in args.backends.split(",")}}
                print(m, s, opt_kind, flush=True)
    write_json(args.out, results)
    print(f"wrote {args.out}")


def measure_memory(model_name: str, sparsity: float, backend: str, opt_kind: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", f"{model_name}:{sparsity}:{backend}:{opt_kind}"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- export size -----------------------------------------------------------------------------------
def export_sizes(model_name: str, sparsity: float, tmp: str) -> dict:
    from sparsetrain.sparsity.backend import use_sparse_backend
    from sparsetrain.sparsity.engine import SparsityEngine
    from sparsetrain.sparsity.storage.csr import export_sparse
    model = mlp(MODELS[model_name])
    dense_path, sparse_path = os.path.join(tmp, "dense.pt"), os.path.join(tmp, "sparse.safetensors")
    masked = SparsityEngine(model, None, "static", sparsity=sparsity, distribution="uniform", dense_first=False,
                            total_steps=10)
    torch.save(model.state_dict(), dense_path)
    engine = use_sparse_backend(model, masked)
    size = export_sparse(model, sparse_path, masks=engine.masks)
    out = {"dense_state_dict_bytes": os.path.getsize(dense_path), "sparse_export_bytes": size}
    os.remove(dense_path), os.remove(sparse_path)
    return out


# --- kernels ---------------------------------------------------------------------------------------
KERNEL_SHAPES = ((4096, 1024), (4096, 4096))   # (out, in): the wide MLP's first and inner layers


def kernel_table(rounds: int, shapes=KERNEL_SHAPES, densities=(0.1, 0.05, 0.01), min_idle: float = 0.0,
                 sparseprop: bool = True) -> dict:
    """Per-layer kernels, batch 128, interleaved: forward, input gradient, weight gradient, and
    the whole layer step (forward + both gradients), dense vs CSR variants. Each entry is the
    median of ``rounds`` in ms; "loads" records the machine's load over the rounds."""
    from sparsetrain.sparsity.storage.csr import SparseLinear, native
    from sparsetrain.sparsity.storage.csr.functional import sparseprop_backend
    from sparsetrain.sparsity.storage.csr.indices import csr_tensor, row_ids
    out = {}
    for n_out, n in shapes:
        for d in densities:
            layer = SparseLinear.random(n, n_out, d)
            layer.kernel = "mkl"  # the "csr" columns: torch's MKL products (the "native" ones: ours)
            w_dense, w_csr = layer.dense_weight(), layer.weight_csr()
            x, g = torch.randn(BATCH, n), torch.randn(BATCH, n_out)
            t = layer.transposed(layer.crow_indices, layer.col_indices)
            v, b = layer.values.detach(), layer.bias.detach()
            wt = csr_tensor(t.crow, t.row, v[t.perm], (n, n_out))
            rows, cols = row_ids(layer.crow_indices), layer.col_indices.long()
            fns = {
                "fwd dense (F.linear)": lambda: nn.functional.linear(x, w_dense),
                "fwd csr sparse.mm(W, xT)": lambda: torch.sparse.mm(w_csr, x.T),
                "fwd csr sparse.mm + bias": lambda: torch.sparse.mm(w_csr, x.T).T + b,
                "fwd csr addmm(bias, W, xT)": lambda: torch.addmm(b.unsqueeze(1), w_csr, x.T).T,
                "dx dense (g W)": lambda: g @ w_dense,
                "dx csr cached Wt": lambda: torch.sparse.mm(wt, g.T),
                "Wt values gather v[perm]": lambda: v[t.perm],
                "Wt values index_select": lambda: torch.index_select(v, 0, t.perm),
                "dW dense (gT x)": lambda: g.T @ x,
                "dW csr sampled_addmm": lambda: torch.sparse.sampled_addmm(w_csr, g.T, x, beta=0.0),
            }
            if native.available():
                xt, gt = x.T.contiguous(), g.T.contiguous()
                fns["fwd native spmm(W, xT, bias)"] = lambda: native.spmm(layer.crow_indices, layer.col_indices, v, xt, b)
                fns["dx native cached Wt"] = lambda: native.spmm(t.crow, t.row, torch.index_select(v, 0, t.perm), gt)
                fns["dW native sddmm"] = lambda: native.sddmm(layer.crow_indices, layer.col_indices, gt, xt)
            if d <= 0.01:
                fns["dW csr gather (g[:,r]*x[:,c]).sum"] = lambda: (g.T[rows] * x.T[cols]).sum(1)
            fns["layer step dense"] = _layer_step(layer.to_linear(), x, g)
            fns["layer step csr"] = _layer_step(layer, x, g)
            if native.available():
                nat = SparseLinear(n, n_out, layer.flat_indices(), layer.values.detach(), layer.bias.detach())
                nat.kernel = "native"
                fns["layer step native"] = _layer_step(nat, x, g)
            if sparseprop and sparseprop_backend() is not None:
                sp = SparseLinear(n, n_out, layer.flat_indices(), layer.values.detach(), layer.bias.detach())
                sp.kernel = "sparseprop"
                fns["layer step sparseprop"] = _layer_step(sp, x, g)
            wait_for_idle(min_idle, timeout=20)
            key = f"{n_out}x{n}@{d}"
            with RoundLoad() as load:
                out[key] = _interleave(fns, rounds)
            out[key]["load"] = load.record
            print(key, json.dumps({k: round(v, 2) for k, v in out[key].items() if k != "load"}), flush=True)
    return out


def _layer_step(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> Callable[[], None]:
    """Forward + backward (input and weight gradients) of one layer, as inside a network."""
    x = x.clone().requires_grad_()

    def run() -> None:
        for p in module.parameters():
            p.grad = None
        x.grad = None
        module(x).backward(g)
    return run


def _interleave(fns: Dict[str, Callable], rounds: int) -> Dict[str, float]:
    times = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


# --- profile ---------------------------------------------------------------------------------------
CATEGORIES = (  # (label, profiler scope whose *total* time is counted); scopes do not overlap
    ("sparse forward: CSR × dense", "sparse_linear.forward"),
    ("sparse input grad: Wᵀ × dense", "sparse_linear.grad_input"),
    ("sparse weight grad on nonzeros", "sparse_linear.grad_weight"),
    ("dense layers forward (GEMM)", "aten::linear"),
    ("dense layers backward (GEMM)", "AddmmBackward0"),
    ("optimizer step", "Optimizer.step#SGD.step"),
    ("engine hooks (after_backward/after_step)", "engine_hooks"),
)


def profile_step(model_name: str, sparsity: float, backend: str, steps: int = 10) -> List[tuple]:
    """Self CPU time per step by category for one configuration (torch.profiler)."""
    x, y = inputs(model_name)
    runner = build(model_name, sparsity, backend, "sgd", x, y, delta_t=10 ** 5, set_to_none=False)
    wall, by_key = profiled_steps(runner.step, 3, steps)
    rows = [(label, by_key.get(key, 0.0)) for label, key in CATEGORIES]
    rows.append(("everything else (activations, loss, autograd, Python)", wall - sum(ms for _, ms in rows)))
    return [("wall time per step (profiled)", wall)] + sorted(rows, key=lambda kv: -kv[1])


UPDATE_CATEGORIES = (  # regions of CSRStore.update (grow_scores is inside grow)
    ("grow scores: ∂L/∂W row blocks from the captured factors, abs", "csr_update.grow_scores"),
    ("grow: top-k over the blocks (minus the scores above)", "csr_update.grow"),
    ("drop: top-k of |w| over the active values", "csr_update.drop"),
    ("new pattern: merge, match, move values / momentum, CSR indices", "csr_update.move_state"),
)


def profile_update(model_name: str, sparsity: float, updates: int = 10) -> List[tuple]:
    """Where a RigL update step of the sparse backend spends its time (torch.profiler, per update)."""
    from torch.profiler import ProfilerActivity, profile
    x, y = inputs(model_name)
    runner = build(model_name, sparsity, "sparse", "sgd", x, y, delta_t=2, set_to_none=False)
    for _ in range(3):
        runner.step()
    walls = []
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        while len(walls) < updates:
            t0 = time.perf_counter()
            if runner.step():
                walls.append(time.perf_counter() - t0)
    by_key = {ev.key: ev.cpu_time_total / 1e3 / updates for ev in prof.key_averages()}
    rows = [[label, by_key.get(key, 0.0)] for label, key in UPDATE_CATEGORIES]
    rows[1][1] -= rows[0][1]
    wall = 1e3 * statistics.median(walls)
    rows.append(["the step's forward/backward, optimizer, engine bookkeeping", wall - sum(ms for _, ms in rows)])
    return [(f"update step (profiled, median of {updates})", wall)] + [tuple(r) for r in rows]


# --- report ----------------------------------------------------------------------------------------
def markdown(results: dict) -> str:
    """The tables of docs/performance.md from a results JSON."""
    return "\n\n".join(filter(None, [_speed_md(results), _memory_md(results), _export_md(results),
                                      _profile_md(results), _kernel_md(results)])) + "\n"


def _speed_md(r: dict) -> str:
    if not r.get("timing"):
        return ""
    if "chosen" not in next(iter(r["timing"].values())):
        return _speed_md_v1(r)
    backends = [b for b in BACKENDS if any(b in t.get("chosen", {}) for t in r["timing"].values())]
    others = [b for b in backends if b != "dense"]
    ms = lambda st: f"{st['median']:.1f} [{st['min']:.1f}–{st['max']:.1f}]"  # noqa: E731
    head = ("| model @ sparsity | " + " | ".join(f"{b}: regular step ms, median [min–max] (zero_grad)" for b in backends)
            + " | " + " | ".join(f"speed-up {b}: ratio of medians (amortised ΔT=100) | paired per round: median "
                                  f"[min–max], quiet rounds" for b in others) + " | noisy rounds |")
    rows = [head, "|---" * (1 + len(backends) + 2 * len(others) + 1) + "|"]
    for key, t in r["timing"].items():
        d = t["dense"]
        cells = [f"{ms(t[b]['regular'])} ({t['chosen'][b].split('/')[1]})" if b in t else "–" for b in backends]
        for b in others:
            if b not in t:
                cells += ["–", "–"]
                continue
            p = paired_ratios(t, b)
            quiet = f"{p['quiet_median']:.2f}× ({p['n_quiet']}/{p['n']})" if p["quiet_median"] else f"– (0/{p['n']})"
            cells += [f"**{d['step_ms'] / t[b]['step_ms']:.2f}×** ({d['amortised_ms'] / t[b]['amortised_ms']:.2f}×)",
                      f"{p['median']:.2f}× [{p['min']:.2f}–{p['max']:.2f}], {quiet}"]
        noisy = sum(x["noisy"] for x in t["rounds"])
        rows.append(f"| {key} | " + " | ".join(cells) + f" | {noisy}/{len(t['rounds'])} |")
    upd = ["", "| model @ sparsity | " + " | ".join(
        f"{b}: update step ms, median [min–max] (n) | step after it" for b in others) + " | dense infer | "
        + " | ".join(f"{b} infer (speed-up)" for b in others) + " |",
        "|---" * (1 + 2 * len(others) + 1 + len(others)) + "|"]
    for key, t in r["timing"].items():
        cells = []
        for b in others:
            if b not in t or not t[b]["update"]:
                cells += ["–", "–"]
                continue
            u, a = t[b]["update"], t[b]["after_update"]
            cells += [f"{u['median']:.0f} [{u['min']:.0f}–{u['max']:.0f}] ({u['n']})", f"{a['median']:.1f}" if a else "–"]
        cells.append(f"{t['dense']['infer_ms']:.1f}")
        cells += [f"{t[b]['infer_ms']:.1f} ({t['dense']['infer_ms'] / t[b]['infer_ms']:.1f}×)" if b in t else "–"
                  for b in others]
        upd.append(f"| {key} | " + " | ".join(cells) + " |")
    zg = ["", "| model @ sparsity | " + " | ".join(f"{n}" for n in next(iter(r["timing"].values()))["runs"]) + " |"]
    zg.append("|---" * (1 + len(next(iter(r["timing"].values()))["runs"])) + "|")
    for key, t in r["timing"].items():
        zg.append(f"| {key} | " + " | ".join(f"{v['step_ms']:.1f}" for v in t["runs"].values()) + " |")
    return "\n".join(rows + upd + zg)


def _speed_md_v1(r: dict) -> str:
    """Tables of a results file written before the zero_grad variants and load records."""
    rows = ["| model @ sparsity | dense | masked-dense | rigl-torch | sparse | sparse-lean | sparse-sp | speed-up sparse "
            "(amortised ΔT=100) | speed-up lean | speed-up sp (amortised) | dense infer | sparse infer | infer speed-up |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, t in r["timing"].items():
        d = t["dense"]
        cell = lambda b: f"{t[b]['step_ms']:.1f} ms" if b in t else "–"  # noqa: E731
        ratio = lambda b, f="step_ms": f"{d[f] / t[b][f]:.1f}×" if b in t else "–"  # noqa: E731
        rows.append(f"| {key} | {d['step_ms']:.1f} ms | {cell('masked')} | {cell('rigl-torch')} | {cell('sparse')} | "
                    f"{cell('sparse-lean')} | {cell('sparse-sp')} | **{ratio('sparse')}** ({ratio('sparse', 'amortised_ms')}) | "
                    f"{ratio('sparse-lean')} | {ratio('sparse-sp')} ({ratio('sparse-sp', 'amortised_ms')}) | "
                    f"{d['infer_ms']:.1f} ms | {t['sparse']['infer_ms']:.1f} ms | "
                    f"**{ratio('sparse', 'infer_ms')}** |")
    upd = ["", "| model @ sparsity | update step (ΔT): masked-dense | rigl-torch | sparse | sparse-lean | sparse-sp |",
           "|---|---|---|---|---|---|"]
    for key, t in r["timing"].items():
        f = lambda b: f"{t[b]['update_step_ms']:.0f} ms" if t.get(b, {}).get("update_step_ms") else "–"  # noqa: E731
        upd.append(f"| {key} | {f('masked')} | {f('rigl-torch')} | {f('sparse')} | {f('sparse-lean')} | {f('sparse-sp')} |")
    return "\n".join(rows + upd)


def _memory_md(r: dict) -> str:
    if not r.get("memory"):
        return ""
    rows = ["| model @ sparsity / optimizer | backend | weights | indices | optimizer state | masks | "
            "persistent total | × nonzeros' share | grads | peak RSS (build) | peak RSS (train) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    mb = lambda b: f"{b / 2 ** 20:.2f} MB"  # noqa: E731
    for key, m in r["memory"].items():
        share = m["share"]["share_bytes"]
        for b in BACKENDS:
            if b not in m:
                continue
            by = m[b]["bytes"]
            total = by["weights"] + by["indices"] + by["optimizer"] + by["masks"]
            rows.append(f"| {key} | {b} | {mb(by['weights'])} | {mb(by['indices'])} | {mb(by['optimizer'])} | "
                        f"{mb(by['masks'])} | {mb(total)} | **{total / share:.2f}×** | {mb(by['grads'])} | "
                        f"{m[b]['build_peak_mb']:.0f} MB | {m[b]['train_peak_mb']:.0f} MB |")
    return "\n".join(rows)


def _export_md(r: dict) -> str:
    if not r.get("export"):
        return ""
    rows = ["| model @ sparsity | dense state_dict (torch.save) | sparse export (safetensors) | ratio |", "|---|---|---|---|"]
    for key, e in r["export"].items():
        d, s = e["dense_state_dict_bytes"], e["sparse_export_bytes"]
        rows.append(f"| {key} | {d / 2 ** 20:.2f} MB | {s / 2 ** 20:.2f} MB | {s / d:.3f} |")
    return "\n".join(rows)


def _profile_md(r: dict) -> str:
    out = []
    for key, rows in r.get("profile", {}).items():
        wall = rows[0][1]
        n = f", {rows[0][0].split(', ')[-1].rstrip(')')}" if "median of" in rows[0][0] else ""  # older files: no count
        out.append(f"**{key}** — {wall:.1f} ms per step (profiled{n})\n\n| where | ms / step | share |\n|---|---|---|")
        out += [f"| {label.replace('|', chr(92) + '|')} | {ms:.2f} | {100 * ms / wall:.0f} % |" for label, ms in rows[1:]]
        out.append("")
    return "\n".join(out)


def _kernel_md(r: dict) -> str:
    if "kernels" not in r:
        return ""
    names = [n for n in next(iter(r["kernels"].values())) if n != "load"]
    has_native = "layer step native" in names  # files measured before the native kernels lack it
    what = "MKL csr / native / sparseprop" if has_native else "csr (sparseprop)"
    rows = ["| layer (out x in) @ density | " + " | ".join(names) + f" | useful-FLOP throughput vs dense GEMM: "
            f"{what} | others' CPU share |", "|---" * (len(names) + 3) + "|"]
    for key, k in r["kernels"].items():
        d = float(key.split("@")[1])
        eff = lambda n: f"{100 * d * k['layer step dense'] / k[n]:.0f} %" if n in k else "–"  # noqa: E731
        load = f"{100 * k['load']['foreign_cpu_share']:.0f} %" if "load" in k else "–"
        rows.append(f"| {key} | " + " | ".join(f"{k[n]:.2f}" if n in k else "–" for n in names)
                    + (f" | {eff('layer step csr')} / {eff('layer step native')} / {eff('layer step sparseprop')}"
                       if has_native else f" | {eff('layer step csr')} ({eff('layer step sparseprop')})") + f" | {load} |")
    return "\n".join(rows) + "\n\n" + _reconcile_md(r)


def _kernel_line(line: str) -> tuple:
    key, values = line.split(" ", 1)
    return key, json.loads(values)


def _reconcile_md(r: dict) -> str:
    """Per-layer kernel times summed over the wide MLP's sparse layers (one 4096x1024, two
    4096x4096) against the end-to-end regular step: the difference is the step's fixed work."""
    k, out = r.get("kernels", {}), []
    for key, t in r.get("timing", {}).items():
        model, sp = key.split("@")
        dens = round(1 - float(sp), 6)
        names = [f"4096x1024@{dens}", f"4096x4096@{dens}", f"4096x4096@{dens}"]
        if model != "wide" or not all(n in k for n in names) or "chosen" not in t:
            continue
        ld = sum(k[n]["layer step dense"] for n in names)
        ls = sum(k[n].get("layer step native", k[n]["layer step csr"]) for n in names)  # the sparse backend's kernel
        e2e_d, e2e_s = t["dense"]["step_ms"], t["sparse"]["step_ms"]
        out.append(f"| {key} | {ld:.1f} | {ls:.1f} | {ld / ls:.2f}× | {e2e_d:.1f} | {e2e_s:.1f} | {e2e_d / e2e_s:.2f}× | "
                   f"{e2e_d - ld:.1f} | {e2e_s - ls:.1f} |")
    if not out:
        return ""
    return "\n".join(["| wide MLP @ sparsity | Σ layer steps dense (ms) | Σ layer steps csr | kernel-only speed-up | "
                      "end-to-end dense step | end-to-end sparse step | end-to-end speed-up | rest of the step: dense | "
                      "rest: sparse |", "|---|---|---|---|---|---|---|---|---|"] + out)


def compare_md(before: dict, after: dict) -> str:
    """Before/after table of two results files (same groups); files of the earlier protocol (no
    per-round ``chosen`` setting) have no paired per-round ratios ("–")."""
    rows = ["| model @ sparsity | dense step ms before → after | sparse step ms before → after | speed-up before → after "
            "(ratio of medians) | amortised ΔT=100 before → after | paired per round before → after | "
            "sparse update step ms before → after |", "|---|---|---|---|---|---|---|"]
    for key, a in after["timing"].items():
        b = before["timing"].get(key)
        if b is None:
            continue
        sp = lambda t, f="step_ms": t["dense"][f] / t["sparse"][f]  # noqa: E731
        paired = lambda t: f"{paired_ratios(t, 'sparse')['median']:.2f}×" if "chosen" in t else "–"  # noqa: E731
        upd = lambda t: f"{t['sparse']['update_step_ms']:.0f}" if t["sparse"]["update_step_ms"] else "–"  # noqa: E731
        rows.append(f"| {key} | {b['dense']['step_ms']:.1f} → {a['dense']['step_ms']:.1f} | "
                    f"{b['sparse']['step_ms']:.1f} → {a['sparse']['step_ms']:.1f} | {sp(b):.2f}× → **{sp(a):.2f}×** | "
                    f"{sp(b, 'amortised_ms'):.2f}× → **{sp(a, 'amortised_ms'):.2f}×** | "
                    f"{paired(b)} → {paired(a)} | {upd(b)} → {upd(a)} |")
    return "\n".join(rows) + "\n"


def report_text(report: Optional[str], compare: Optional[List[str]] = None) -> str:
    """What ``--report JSON`` (or ``--compare BEFORE AFTER``) prints."""
    if compare:
        with open(compare[0]) as fb, open(compare[1]) as fa:
            return compare_md(json.load(fb), json.load(fa))
    with open(report) as f:
        if report.endswith(".jsonl"):    # the per-layer lines kernel_table prints
            return _kernel_md({"kernels": dict(_kernel_line(line) for line in f if line.strip())})
        return markdown(json.load(f))


# --- driver ----------------------------------------------------------------------------------------
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="small,wide")
    ap.add_argument("--sparsities", default="0.9,0.95,0.99")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    ap.add_argument("--rounds", type=int, default=17)
    ap.add_argument("--per-round", type=int, default=3)
    ap.add_argument("--delta-t", type=int, default=5, help="ΔT while timing (update steps get sampled)")
    ap.add_argument("--zero-grad", default="keep,none",
                    help="zero_grad settings timed per backend (keep: set_to_none=False; none: True); "
                         "each backend is reported at its faster one")
    ap.add_argument("--profile", type=int, default=1, help="0 skips the torch.profiler breakdown")
    ap.add_argument("--memory", default="sgd", help="optimizers for the memory table, every group ('' skips it, "
                                                            "--memory-adam too)")
    ap.add_argument("--memory-adam", default="wide@0.95,wide@0.99", help="groups also measured with Adam")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-idle", type=float, default=0.8,
                    help="before each timing round wait (up to 20 s) until this fraction of the CPU is idle")
    ap.add_argument("--out", default="docs/perf/sparse_backend.json")
    ap.add_argument("--append", action="store_true",
                    help="add this run's groups to an existing --out file (same protocol) instead of replacing it")
    ap.add_argument("--kernel-rounds", type=int, default=11, help="0 skips the per-kernel table")
    ap.add_argument("--report", metavar="JSON", help="print the Markdown tables of a results file and exit")
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"),
                    help="print the before/after table of two results files and exit")
    ap.add_argument("--table", metavar="N|N-M", help="with --report/--compare: print only the N-th table "
                    "(or tables N to M; tables are the blocks between blank lines)")
    ap.add_argument("--memory-only", action="store_true", help="measure only the memory table (--models, "
                    "--sparsities, --backends, --memory) into --out")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child)
    if args.compare or args.report:
        text = report_text(args.report, args.compare)
        return print(select_tables(text, args.table) if args.table else text)
    if args.memory_only:
        return memory_only(args)
    torch.set_num_threads(args.threads)
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                           "torch": torch.__version__, "loadavg_start": os.getloadavg()},
               "command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
               "timing": {}, "memory": {}, "export": {}}
    if args.append and os.path.exists(args.out):
        with open(args.out) as f:
            previous = json.load(f)
        previous.setdefault("runs", []).append({k: results.pop(k) for k in ("command", "started")})
        results = {**previous, **{k: v for k, v in results.items() if k not in previous}}
    if args.kernel_rounds:
        results["kernels"] = kernel_table(args.kernel_rounds, min_idle=args.min_idle,
                                          sparseprop="sparse-sp" in args.backends.split(","))
    results.setdefault("profile", {})
    for m, s, b in (("wide", 0.95, "sparse"), ("wide", 0.99, "sparse"), ("wide", 0.99, "dense"))[:3 * args.profile]:
        wait_for_idle(args.min_idle, timeout=20)
        results["profile"][f"{m}@{s}/{b}"] = profile_step(m, s, b)
    for s in (0.95, 0.99)[:2 * args.profile]:
        wait_for_idle(args.min_idle, timeout=20)
        results["profile"][f"wide@{s}/sparse, RigL update step"] = profile_update("wide", s)
    backends = args.backends.split(",")
    from sparsetrain.sparsity.storage.csr.functional import sparseprop_backend
    if "sparse-sp" in backends and sparseprop_backend() is None:
        print("sparseprop is not installed (pip install 'sparsetrain[accel]'): skipping the sparse-sp backend")
        backends.remove("sparse-sp")
    for m in args.models.split(","):
        for s in map(float, filter(None, args.sparsities.split(","))):
            key = f"{m}@{s}"
            results["timing"][key] = time_group(m, s, backends, args.optimizer, args.rounds, args.per_round,
                                                args.min_idle, args.zero_grad.split(","), args.delta_t)
            print(key, json.dumps(results["timing"][key]), flush=True)
            opts = list(filter(None, args.memory.split(",")))
            opts += ["adam"] if opts and key in args.memory_adam.split(",") and "adam" not in opts else []
            for opt_kind in opts:
                results["memory"][f"{key}/{opt_kind}"] = {
                    "share": active_share(m, s, opt_kind),
                    **{b: measure_memory(m, s, b, opt_kind) for b in backends}}
            results["export"][key] = export_sizes(m, s, os.path.dirname(os.path.abspath(args.out)))
            write_json(args.out, results)             # after every group: a stopped run keeps what it measured
    results["machine"]["loadavg_end"] = os.getloadavg()
    write_json(args.out, results)
    print(f"wrote {args.out}")



if __name__ == "__main__":
    main()
