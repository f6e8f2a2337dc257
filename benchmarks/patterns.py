"""Sparsity patterns at equal parameter count: accuracy of RigL, SET, Static and GMP with
unstructured, 2:4, 4×4-block and channel masks, and CPU inference time of the channel-pruned
export against the dense model and the unstructured sparse (CSR) storage.

    nice -n 10 python benchmarks/patterns.py --data-dir ../shared/data            # about 25 min, 1 thread
    python benchmarks/patterns.py --data-dir ../shared/data --steps 50 --seeds 0 --out-dir /tmp/pt  # smoke

Every run is an ordinary ``sparsetrain train`` run (idempotent: a rerun skips finished runs). All
layers are sparsified at 50 % (uniform, no dense first layer): 2:4 fixes the density at 1/2, so
every pattern trains the same number of weights. A layer that cannot hold a pattern keeps it
unstructured at the same density (``UNSTRUCTURED_LAYERS``: the 10-way output layer everywhere,
since removing its channels removes classes and 4×4 blocks do not tile 10 rows; LeNet-5's two
convolutions under 2:4 and blocks, whose rows of 25 and 150 weights are not multiples of 4).
Short schedules on purpose (``--steps`` SGD steps of batch 128): the comparison is between
patterns, not against published accuracies. Writes the raw results to ``--json`` and the table
between the markers of docs/methods.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Dict, List

import torch
import torch.nn.functional as F

from sparsetrain.config import load_config
from sparsetrain.experiments.run_store import finished_summary, run_dir_for, train_run

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- patterns table: begin -->", "<!-- patterns table: end -->"

SETTINGS = {"mnist-mlp": ("mnist", "lenet300"), "fashion-mlp": ("fashion_mnist", "lenet300"),
            "fashion-lenet5": ("fashion_mnist", "lenet5")}
PATTERNS = ("unstructured", "2:4", "block:4x4", "channel")
METHODS = ("rigl", "set", "static", "gmp")
UNSTRUCTURED_LAYERS = {
    "lenet300": {p: ["layers.4.weight"] for p in PATTERNS[1:]},
    "lenet5": {"2:4": ["features.*", "classifier.4.weight"], "block:4x4": ["features.*", "classifier.4.weight"],
               "channel": ["classifier.4.weight"]},
}


def overrides(args, setting: str, method: str, pattern: str, seed: int) -> List[str]:
    data, model = SETTINGS[setting]
    keep = {n: "unstructured" for n in UNSTRUCTURED_LAYERS[model].get(pattern, [])}
    opts = {"delta_t": 50} if method in ("rigl", "set") else {}
    return [f"data.name={data}", f"data.root={args.data_dir}", "data.batch_size=128", f"model.name={model}",
            f"sparsity.method={method}", "sparsity.sparsity=0.5", "sparsity.distribution=uniform",
            "sparsity.dense_first=false", f"sparsity.pattern={pattern}",
            f"sparsity.pattern_overrides={json.dumps(keep)}", f"sparsity.options={json.dumps(opts)}",
            "optim.lr=0.05", "optim.momentum=0.9", "optim.schedule=cosine", f"train.steps={args.lenet_steps if model == 'lenet5' else args.steps}",
            "train.eval_every=0", "train.progress=off", "train.threads=1", f"out_dir={args.out_dir}", f"seed={seed}"]


def grid(args) -> List[tuple]:
    """(seed, setting, method, pattern) in seed-major order, so an interrupted run has whole seeds."""
    chosen = dict(g.split(":") for g in args.grid) if args.grid else {k: ",".join(METHODS) for k in SETTINGS}
    return [(seed, setting, method, pattern) for seed in args.seeds for setting in SETTINGS if setting in chosen
            for method in chosen[setting].split(",") for pattern in PATTERNS]


def run_all(args) -> List[dict]:
    """Train (or, with ``--report-only``, only collect) every run of the grid."""
    rows = []
    for seed, setting, method, pattern in grid(args):
        cfg = load_config(overrides=tuple(overrides(args, setting, method, pattern, seed)))
        s = finished_summary(run_dir_for(cfg)) if args.report_only else train_run(cfg, run_dir_for(cfg))
        if s is None:
            continue
        rows.append({"setting": setting, "method": method, "pattern": pattern, "seed": seed,
                     "test_accuracy": s["final"]["test"]["accuracy"], "density": s["achieved_density"],
                     "inference_flops_ratio": s.get("inference_flops_ratio"), "wall_s": s["wall_time_s"],
                     "run_dir": s["run_dir"]})
        print(f"{setting} {method} {pattern} seed {seed}: {rows[-1]['test_accuracy']:.4f}", flush=True)
    return rows


def interleaved_ms(fns: Dict[str, object], reps: int = 60) -> Dict[str, Dict[str, float]]:
    """Median and quartiles (ms) of each callable, timed round-robin (one call of each per round)
    so that load changes on a shared machine hit every variant alike."""
    for fn in fns.values():
        for _ in range(5):
            fn()
    times: Dict[str, list] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t) * 1e3)
    out = {}
    for k, ts in times.items():
        q = statistics.quantiles(ts, n=4)
        out[k] = {"median_ms": statistics.median(ts), "q1_ms": q[0], "q3_ms": q[2]}
    return out


def inference(args, rows: List[dict]) -> dict:
    """CPU inference of one trained channel-sparse RigL MLP per setting: dense model (masked weights,
    dense kernels), the channel-pruned export, and the unstructured RigL model of the same seed
    stored as CSR (the sparse backend's SparseLinear); all in this process, batch 256, 1 thread."""
    from sparsetrain.sparsity.export import channel_counts, channel_prune

    torch.set_num_threads(1)
    out = {}
    for setting in ("mnist-mlp", "fashion-lenet5"):
        pick = {p: next((r for r in rows if (r["setting"], r["method"], r["pattern"]) == (setting, "rigl", p)), None)
                for p in ("channel", "unstructured")}
        if None in pick.values():
            continue
        chan, unst = _load(pick["channel"]), _load(pick["unstructured"])
        model, masks, x = chan
        small = channel_prune(model, masks, x)
        umodel = unst[0]
        csr = _to_csr(umodel, unst[1])
        with torch.no_grad():
            assert torch.allclose(csr(x), umodel(x), atol=1e-4)
            times = interleaved_ms({"dense": lambda: model(x), "channel_export": lambda: small(x),
                                    "unstructured_csr": lambda: csr(x)})
        base = times["dense"]["median_ms"]
        out[setting] = {"times": times, "speedup_vs_dense": {k: base / v["median_ms"] for k, v in times.items()},
                        "exported_shapes": {k: list(v) for k, v in channel_counts(small).items()},
                        "params": {"dense": sum(p.numel() for p in model.parameters()),
                                   "channel_export": sum(p.numel() for p in small.parameters())}}
    return out


def _load(row: dict):
    """(model in eval mode with the run's final weights, its masks, a random input batch of 256)."""
    from sparsetrain.data import dataset_info
    from sparsetrain.experiments.run_store import load_run_config
    from sparsetrain.models import build_model
    from sparsetrain.train.checkpoint import load_checkpoint

    run_dir = Path(row["run_dir"])
    cfg = load_run_config(run_dir)
    info = dataset_info(cfg.data.name, **cfg.data.options)
    model = build_model(cfg.model.name, info, width=cfg.model.width, **cfg.model.options)
    ck = load_checkpoint(run_dir / "checkpoint.pt")
    model.load_state_dict(ck["model"])
    x = torch.randn(256, *info.input_shape, generator=torch.Generator().manual_seed(0))
    return model.eval(), {n: m.to_dense() if m.layout != torch.strided else m for n, m in ck["engine"]["masks"].items()}, x


def _to_csr(model, masks):
    """A copy of ``model`` with every masked Linear/Conv2d held as CSR (the sparse backend's layers)."""
    import copy

    from sparsetrain.sparsity.storage.conv.layer import SparseConv2d
    from sparsetrain.sparsity.storage.csr.linear import SparseLinear

    out = copy.deepcopy(model)
    for name, m in list(out.named_modules()):
        mask = masks.get(f"{name}.weight")
        if mask is None:
            continue
        new = SparseLinear.from_dense(m, mask) if isinstance(m, torch.nn.Linear) else SparseConv2d.from_dense(m, mask)
        parent = out.get_submodule(name.rsplit(".", 1)[0]) if "." in name else out
        setattr(parent, name.rsplit(".", 1)[-1], new)
    return out.eval()


def table(rows: List[dict], n_seeds: int) -> str:
    """Median (min–max) test accuracy over seeds, one row per setting and method ([k]: only k of
    ``n_seeds`` seeds finished)."""
    lines = ["| setting | method | " + " | ".join(PATTERNS) + " |", "|---|---|" + "---|" * len(PATTERNS)]
    present = {(r["setting"], r["method"]) for r in rows}
    for setting in SETTINGS:
        for method in [m for m in METHODS if (setting, m) in present]:
            cells = []
            for pattern in PATTERNS:
                acc = [r["test_accuracy"] for r in rows
                       if (r["setting"], r["method"], r["pattern"]) == (setting, method, pattern)]
                few = f" [{len(acc)}]" if len(acc) < n_seeds else ""
                cells.append(f"{statistics.median(acc):.4f} ({min(acc):.4f}–{max(acc):.4f}){few}" if acc else "–")
            lines.append(f"| {setting} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def inference_table(inf: dict) -> str:
    lines = ["| setting | dense ms | channel export ms (× dense speed) | unstructured CSR ms (× dense speed) | "
             "params dense → export |", "|---|---|---|---|---|"]
    for setting, r in inf.items():
        t, sp = r["times"], r["speedup_vs_dense"]
        lines.append(f"| {setting} | {t['dense']['median_ms']:.3f} | {t['channel_export']['median_ms']:.3f} "
                     f"({sp['channel_export']:.2f}×) | {t['unstructured_csr']['median_ms']:.3f} "
                     f"({sp['unstructured_csr']:.2f}×) | {r['params']['dense']} → {r['params']['channel_export']} |")
    return "\n".join(lines)


def write_doc(args, rows: List[dict], inf: dict) -> None:
    doc = ROOT / "docs" / "methods.md"
    text = doc.read_text()
    minutes = sum(r["wall_s"] for r in rows) / 60
    body = "\n".join([
        BEGIN,
        f"Generated by `nice -n 10 python benchmarks/patterns.py --data-dir DATA --steps {args.steps} "
        f"--lenet-steps {args.lenet_steps}" + (f" --grid {' '.join(args.grid)}" if args.grid else "") + " --seeds "
        f"{' '.join(map(str, args.seeds))}` (raw results: `{args.json}`; {len(rows)} runs, "
        f"{minutes:.1f} min of training on 1 CPU thread). Test accuracy, median (min–max) over "
        f"{len(args.seeds)} seeds, {args.steps} steps (LeNet-5: {args.lenet_steps}) of batch 128, every layer "
        "at 50 % density (the layers listed in the script's UNSTRUCTURED_LAYERS unstructured):",
        "", table(rows, len(args.seeds)), "",
        "CPU inference of a batch of 256 (1 thread, medians of 60 calls timed round-robin, one process): the RigL model "
        "trained with channel sparsity as masked dense weights, as its channel-pruned export, and the RigL "
        "model trained unstructured held as CSR:", "", inference_table(inf), END])
    if BEGIN in text:
        text = text[:text.index(BEGIN)] + body + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    doc.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out-dir", default=str(ROOT / "runs" / "patterns"))
    ap.add_argument("--steps", type=int, default=600, help="training steps of the MLP runs")
    ap.add_argument("--lenet-steps", type=int, default=250, help="training steps of the LeNet-5 runs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", default="docs/perf/patterns.json")
    ap.add_argument("--grid", nargs="*", default=None, metavar="SETTING:M1,M2",
                    help="settings and their methods, e.g. mnist-mlp:rigl,set fashion-lenet5:rigl (default: all)")
    ap.add_argument("--report-only", action="store_true", help="collect finished runs, train nothing")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite the table in docs/methods.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = run_all(args)
    inf = inference(args, rows)
    (ROOT / args.json).write_text(json.dumps({"steps": args.steps, "lenet_steps": args.lenet_steps,
                                              "seeds": args.seeds, "runs": rows,
                                              "inference": inf}, indent=1))
    print(table(rows, len(args.seeds)))
    print(inference_table(inf))
    if not args.no_doc:
        write_doc(args, rows, inf)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
