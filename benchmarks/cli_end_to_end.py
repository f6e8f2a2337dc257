"""End to end from the command line: `sparsetrain train` on the masked and the sparse backend.

    python benchmarks/cli_end_to_end.py --out docs/perf/cli_end_to_end.json      # minutes: the masked child dominates
    python benchmarks/cli_end_to_end.py --report docs/perf/cli_end_to_end.json   # the table of docs/performance.md

Protocol: the wide-MLP recipe of docs/performance.md ("End to end from the command line"):
MNIST, MLP 784-4096-4096-4096-10, RigL at 99 % uniform with a sparse first layer
(``sparsity.dense_first=false``), Adam lr 0.001, one epoch at batch 64. Each variant is one
``python -m sparsetrain train`` child process in a fresh output folder, one after the other:
``masked`` (dense weights times masks), ``sparse`` (``sparsity.backend=sparse``) and
``sparseprop`` (the sparse backend on the sparseprop kernels without Wᵀ,
``backend_options={"kernel": "sparseprop", "cache_transpose": false}``; skipped, and recorded as
such, when the package is missing). ``--repeats N`` runs the variants N times in rotating order.

Per run the file keeps the child's wall time (from start to exit, so data loading and evaluation
included), its peak resident memory (``ru_maxrss`` of that child from ``os.wait4``: the whole
process, data included), the test accuracy and the step count and training time of its
summary.json, with the machine and the 1-minute load average before and after each run.
``--steps`` / ``--hidden`` / ``--dataset`` shrink the job for a smoke test. ``--config`` runs
that config's job instead (``--epochs`` of it) and ``--seeds`` repeats every variant per seed,
e.g. the CNN check of docs/performance.md:

    python benchmarks/cli_end_to_end.py --config configs/fashion_lenet5.toml --epochs 2 --seeds 0,1,2 \
        --variants masked,sparse,sparse-all --out docs/perf/cli_fashion_lenet5.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from perf_common import add_io_flags, command, conclude, machine, read_json, spread, utc_now, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "masked": ("masked (dense weights × masks)", ["--set", "sparsity.backend=masked"]),
    "sparse": ("sparse (default kernel: native where built)", ["--set", "sparsity.backend=sparse"]),
    "sparse-mkl": ('sparse, `backend_options={"kernel": "mkl"}`',
                   ["--set", "sparsity.backend=sparse", "--set", 'sparsity.backend_options={"kernel": "mkl"}']),
    "sparse-all": ('sparse, every layer compressed (`backend_options={"overrides": {"*": "sparse"}}`)',
                   ["--set", "sparsity.backend=sparse", "--set", 'sparsity.backend_options={"overrides": {"*": "sparse"}}']),
    "sparseprop": ('sparse, `backend_options={"kernel": "sparseprop", "cache_transpose": false}`',
                   ["--set", "sparsity.backend=sparse", "--set",
                    'sparsity.backend_options={"kernel": "sparseprop", "cache_transpose": false}']),
}


def recipe(args, seed: int) -> List[str]:
    """The ``sparsetrain train`` arguments shared by every variant (``--config``: that config's job,
    ``--epochs`` of it)."""
    cmd = ["train", "--quiet", "--data-dir", args.data_dir]
    if args.config:
        cmd += ["--config", args.config]
    else:
        hidden = [int(h) for h in args.hidden.split(",")]
        cmd += ["--set", f"data.name={args.dataset}", "--set", "model.name=mlp",
                "--set", f"model.options={json.dumps({'hidden': hidden})}",
                "--set", "sparsity.method=rigl", "--set", f"sparsity.sparsity={args.sparsity}",
                "--set", "sparsity.distribution=uniform", "--set", "sparsity.dense_first=false",
                "--set", "optim.name=adam", "--set", "optim.lr=0.001"]
    cmd += ["--set", f"train.epochs={args.epochs}", "--set", f"seed={seed}"]
    if args.steps:
        cmd += ["--set", f"train.steps={args.steps}"]
    if args.threads:
        cmd += ["--set", f"train.threads={args.threads}"]
    return cmd


def have_sparseprop() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import sparseprop"], capture_output=True)
    return probe.returncode == 0


def run_child(cmd: List[str], env: Dict[str, str], log: Path) -> Dict[str, float]:
    """Run ``cmd``; its exit status, wall seconds and peak RSS (MB, from wait4's rusage)."""
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    return {"returncode": proc.returncode, "wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}


def one_run(variant: str, args, env: Dict[str, str], seed: int) -> dict:
    """One ``sparsetrain train`` child of ``variant`` in a fresh output folder."""
    with tempfile.TemporaryDirectory(prefix="cli_e2e_") as tmp:
        cmd = [sys.executable, "-m", "sparsetrain"] + recipe(args, seed) + VARIANTS[variant][1] + ["--out-dir", tmp]
        rec = {"variant": variant, "seed": seed, "command": cmd[1:-2], "started": utc_now(),
               "loadavg_before": list(os.getloadavg())}
        rec.update(run_child(cmd, env, Path(tmp) / "log.txt"))
        rec["loadavg_after"] = list(os.getloadavg())
        summaries = sorted(Path(tmp).rglob("summary.json"))
        if rec["returncode"] != 0 or not summaries:
            rec["error"] = (Path(tmp) / "log.txt").read_text()[-2000:]
            return rec
        summary = json.loads(summaries[0].read_text())
        rec.update(test_accuracy=summary["final"]["test"]["accuracy"], steps=summary["steps"],
                   train_wall_s=summary["wall_time_s"], compressed_layers=summary.get("compressed_layers"),
                   built=summary.get("built"), achieved_sparsity=summary.get("achieved_sparsity"))
    return rec


def report(results: dict) -> str:
    """The Markdown table of a results file: per variant wall time, test accuracy, peak RSS."""
    rows = ["| backend | wall time | test accuracy | peak RSS (whole process, data included) |", "|---|---|---|---|"]
    for variant, (label, _) in VARIANTS.items():
        runs = [r for r in results["runs"] if r["variant"] == variant]
        if not runs:
            continue
        if any("error" in r for r in runs):
            rows.append(f"| {label} | failed | – | – |")
            continue
        rows.append(f"| {label} | {_cell([r['wall_s'] for r in runs], 1, ' s')} | "
                    f"{_cell([100 * r['test_accuracy'] for r in runs], 2, ' %')} | "
                    f"{_cell([r['peak_rss_mb'] / 1024 for r in runs], 2, ' GB')} |")
    for variant, why in results.get("skipped", {}).items():
        rows.append(f"| {VARIANTS[variant][0]} | not run: {why} | – | – |")
    m, r = results["machine"], results["recipe"]
    steps = sorted({run["steps"] for run in results["runs"] if "steps" in run})
    loads = [run[k][0] for run in results["runs"] for k in ("loadavg_before", "loadavg_after")]
    job = (f"{r['config']}, {r['epochs']:g} epochs" if r.get("config") else
           f"{r['dataset']}, MLP hidden {r['hidden']}, RigL {r['sparsity']} uniform, Adam lr 0.001")
    seeds = sorted({run["seed"] for run in results["runs"] if "seed" in run})   # files before --seeds: one seed
    seeds_text = f", seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}" if seeds else ""
    rows += ["", f"{job}, {'/'.join(map(str, steps))} steps{seeds_text}; torch {m['torch']}, {m['cpus']} CPUs; "
             f"runs one after the other, 1-min load average {min(loads):.1f}–{max(loads):.1f}."]
    return "\n".join(rows)


def _cell(values: List[float], digits: int, unit: str) -> str:
    """One value, or the median [min–max] (n) of several."""
    f = f"{{:.{digits}f}}"
    if len(values) == 1:
        return f.format(values[0]) + unit
    st = spread(values)
    return f"{f.format(st['median'])}{unit} [{f.format(st['min'])}–{f.format(st['max'])}] ({st['n']})"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--hidden", default="4096,4096,4096", help="hidden widths of the MLP")
    ap.add_argument("--sparsity", type=float, default=0.99)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: the whole epochs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", default="", help="comma-separated seeds, each run per variant (default: --seed)")
    ap.add_argument("--config", default="", help="a run config (e.g. configs/fashion_lenet5.toml) instead of the "
                    "wide-MLP recipe; --epochs of it")
    ap.add_argument("--threads", type=int, default=0, help="train.threads of the children (0: the CLI's choice)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--repeats", type=int, default=1)
    add_io_flags(ap)
    args = ap.parse_args(argv)
    if args.report:
        return print(report(read_json(args.report)))
    variants = args.variants.split(",")
    if any(v not in VARIANTS for v in variants):
        ap.error(f"--variants: choose from {', '.join(VARIANTS)}")
    results = {"command": command("cli_end_to_end.py", argv),
               "machine": machine(args.threads),
               "recipe": {"dataset": args.dataset, "hidden": args.hidden, "sparsity": args.sparsity,
                          "epochs": args.epochs, "steps": args.steps, "seed": args.seed,
                          "train.threads": args.threads, **({"config": args.config} if args.config else {})},
               "runs": [], "skipped": {}}
    if "sparseprop" in variants and not have_sparseprop():
        results["skipped"]["sparseprop"] = "sparseprop is not installed"
        variants.remove("sparseprop")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    for i, seed in [(i, seed) for seed in seeds for i in range(args.repeats)]:
        for v in variants[i % len(variants):] + variants[:i % len(variants)]:
            results["runs"].append(one_run(v, args, env, seed))
            print(json.dumps({k: v for k, v in results["runs"][-1].items() if k != "command"}), flush=True)
            if args.out:
                write_json(args.out, results)
    conclude(results, args.out, report)


if __name__ == "__main__":
    main()
