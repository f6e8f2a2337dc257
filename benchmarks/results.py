"""Records and page of docs/results.md, and the small-scale grids of the RigL paper's claims.

    PYTHONPATH=src python benchmarks/results.py --report-only [--figures]   # the page from docs/results/data/
    PYTHONPATH=src python benchmarks/results.py --extract RUNS_ROOT --machine TEXT   # record runs, rebuild the page
    PYTHONPATH=src python benchmarks/results.py --scale 0.1 --seeds 3 --jobs 2       # run the small grids
    PYTHONPATH=src python benchmarks/results.py --estimate --scale 0.1 --seeds 3 --jobs 2

docs/results.md is generated only from the committed records docs/results/data/<block>.jsonl (one
line per finished run; :mod:`sparsetrain.reports.record`) by benchmarks/results_report.py, which
also states the claims, their margins and the test. ``--extract`` turns run directories (e.g. those
of benchmarks/repro_runs.py: RUNS_ROOT/core_full, ptb, lottery, fashion_lr) into records.

Running (without ``--report-only``/``--extract``) is an ordinary sweep
(:mod:`sparsetrain.experiments.sweep`) over the configs in configs/, idempotent: finished runs are
skipped, interrupted ones resume. ``--scale`` multiplies every config's training length (20 epochs
for the MNIST-size settings, 4 for PTB). Experiments (Evci et al., ICML 2020):

* main: per setting and sparsity in {80, 90, 95, 98}%: Dense, Static, SET, SNFS, RigL (uniform
  and ERK), gradual magnitude pruning (GMP), Small-Dense, RigL 2× and 5×, and RigL uniform at the
  sparsity whose inference FLOPs equal RigL-ERK's (ERK vs uniform at equal FLOPs);
* sensitivity: RigL (MNIST LeNet-300-100, 90%, uniform) over ΔT ∈ {50,100,500,1000} × α ∈ {0.1,0.3,0.5};
* ptb: word-level PTB LSTM at 75%: Dense, Static, SET, SNFS, RigL, GMP;
* landscape: Static, then RigL started from the Static solution, and the loss on the line between them (§5).

Their records go to docs/results/data/scale<S>_<experiment>.jsonl (kept apart from the full-scale
blocks the page shows) and the landscape curve to docs/results/landscape_mnist_static_to_rigl.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SPARSITIES = (0.8, 0.9, 0.95, 0.98)
PTB_SPARSITY = 0.75
SENS_SPARSITY = 0.9
DELTA_TS = (50, 100, 500, 1000)
ALPHAS = (0.1, 0.3, 0.5)

log = logging.getLogger("results")


@dataclass(frozen=True)
class Setting:
    """A dataset/model pair: a config file plus overrides."""

    name: str
    config: str
    overrides: Tuple[str, ...] = ()
    title: str = ""


SETTINGS = {s.name: s for s in (
    Setting("mnist_lenet300", "configs/mnist_lenet300.toml", (), "MNIST, LeNet-300-100"),
    Setting("fashion_lenet5", "configs/fashion_lenet5.toml", (), "Fashion-MNIST, LeNet-5"),
    Setting("fashion_mlp", "configs/mnist_lenet300.toml", ("data.name=fashion_mnist",), "Fashion-MNIST, MLP (LeNet-300-100)"),
)}
PTB = Setting("ptb_lstm", "configs/ptb_lstm.toml", (), "Penn Treebank (word level), LSTM")


@dataclass
class Plan:
    """What to run: scale, seeds, which experiments, which methods."""

    scale: float = 0.1
    setting_scale: Dict[str, float] = field(default_factory=dict)  # per-setting overrides of scale
    seeds: int = 3
    jobs: int = 1
    settings: Tuple[str, ...] = tuple(SETTINGS)
    sparsities: Tuple[float, ...] = SPARSITIES
    methods: Optional[Tuple[str, ...]] = None  # None: all main variants
    sensitivity: bool = True
    ptb: bool = True
    ptb_seeds: int = 1
    landscape: bool = True
    runs_dir: Path = ROOT / "runs" / "results"
    docs: Path = ROOT / "docs"


# --- configs ------------------------------------------------------------------------------------
def base_config(setting: Setting, plan: Plan, out_dir: Path, data: Path = DATA):
    """The setting's RunConfig at the plan's scale (or its own), writing under ``out_dir``."""
    from sparsetrain.config import load_config

    cfg = load_config(str(ROOT / setting.config), setting.overrides + (
        f"out_dir={out_dir}", f"data.root={data}", "train.progress=off"))
    scale = plan.setting_scale.get(setting.name, plan.scale)
    return load_config(base=_to_dict(cfg), overrides=(f"train.epochs={cfg.train.epochs * scale}",))


def _to_dict(cfg) -> Dict[str, Any]:
    from sparsetrain.config import to_dict
    return to_dict(cfg)


def inference_flops(cfg, sparsity: float, distribution: str) -> float:
    """Sparse forward FLOPs per example of ``cfg``'s model at its starting masks."""
    import dataclasses

    from sparsetrain.experiments.flops_estimate import estimate_flops

    static = dataclasses.replace(cfg.sparsity, sparsity=sparsity, distribution=distribution, method="static",
                                 options={})
    return estimate_flops(dataclasses.replace(cfg, sparsity=static)).report.sparse


def equal_flops_sparsity(cfg, sparsity: float) -> Optional[float]:
    """Uniform sparsity whose inference FLOPs equal ERK's at ``sparsity`` (bisection; FLOPs fall
    monotonically with sparsity), or None when no uniform sparsity below 99.9% gets that low (a
    dense first layer can cost more than the whole ERK network). The reproducibility report's
    "equal FLOPs" comparison."""
    target = inference_flops(cfg, sparsity, "erk")
    lo, hi = 0.0, 0.999
    if inference_flops(cfg, hi, "uniform") > target:
        return None
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if inference_flops(cfg, mid, "uniform") > target else (lo, mid)
    return round((lo + hi) / 2, 4)


def _variant(label: str, method: str, sparsity: float, **extra) -> Dict[str, Any]:
    point = {"sparsity.method": method, "sparsity.sparsity": sparsity, "sparsity.distribution": "uniform"}
    if method in ("dense", "static", "gmp", "small_dense"):
        point["sparsity.options"] = {}  # the configs' options are RigL's schedule
    point.update(extra)
    return {"label": label, "point": point}


def main_variants(cfg, plan: Plan, eq_flops: Dict[float, Optional[float]]) -> List[Dict[str, Any]]:
    """Labelled grid points of the main comparison (labels are for --methods filtering);
    fills ``eq_flops`` with sparsity -> uniform sparsity of equal FLOPs (None: unreachable)."""
    out = [_variant("dense", "dense", 0.0)]
    for s in plan.sparsities:
        out += [_variant(m, m, s) for m in ("static", "set", "snfs", "rigl", "gmp", "small_dense")]
        out.append(_variant("rigl_erk", "rigl", s, **{"sparsity.distribution": "erk"}))
        out += [_variant(f"rigl_{m}x", "rigl", s, **{"train.multiplier": float(m)}) for m in (2, 5)]
        s_u = equal_flops_sparsity(cfg, s)
        if s_u is None or abs(s_u - s) > 2e-3:  # MLPs: FLOPs follow nonzeros, uniform already matches
            eq_flops[s] = s_u
        if s_u is not None and abs(s_u - s) > 2e-3:
            out.append(_variant("rigl_eqflops", "rigl", s_u))
    if plan.methods is not None:
        out = [v for v in out if v["label"] in plan.methods]
    return out


def available(variants: List[Dict[str, Any]], notes: List[str]) -> List[Dict[str, Any]]:
    """Drop variants whose method is not registered (noted in the report)."""
    from sparsetrain.registry import METHODS
    import sparsetrain.sparsity  # noqa: F401

    missing = sorted({v["point"]["sparsity.method"] for v in variants} - set(METHODS.names()))
    for m in missing:
        notes.append(f"method '{m}' is not available in this version; its runs were skipped.")
    return [v for v in variants if v["point"]["sparsity.method"] not in missing]


def spec_for(cfg, variants: List[Dict[str, Any]], seeds: int):
    from sparsetrain.experiments.sweep import SweepSpec
    return SweepSpec(base=_to_dict(cfg), grid={"seed": list(range(seeds))},
                     variants=[v["point"] for v in variants])


# --- experiments -----------------------------------------------------------------------------
@dataclass
class Experiment:
    """One sweep: a name (its run directory), a setting and its grid."""

    name: str
    setting: Setting
    spec: Any
    configs: list = field(default_factory=list)
    eq_flops: Dict[float, Optional[float]] = field(default_factory=dict)


def build_experiments(plan: Plan, notes: List[str]) -> List[Experiment]:
    """Every sweep of the plan, expanded and validated (nothing runs yet)."""
    from sparsetrain.experiments.sweep import expand

    exps = []
    for name in plan.settings:
        st = SETTINGS[name]
        cfg = base_config(st, plan, plan.runs_dir / name)
        eq: Dict[float, Optional[float]] = {}
        variants = available(main_variants(cfg, plan, eq), notes)
        exps.append(Experiment(name, st, spec_for(cfg, variants, plan.seeds), eq_flops=eq))
    if plan.sensitivity:
        st = SETTINGS["mnist_lenet300"]
        cfg = base_config(st, plan, plan.runs_dir / "sensitivity")
        pts = [_variant(f"rigl_dt{d}_a{a}", "rigl", SENS_SPARSITY, **{"sparsity.options.delta_t": d,
                                                                     "sparsity.options.alpha": a})
               for d in DELTA_TS for a in ALPHAS]
        exps.append(Experiment("sensitivity", st, spec_for(cfg, pts, plan.seeds)))
    if plan.ptb:
        cfg = base_config(PTB, plan, plan.runs_dir / "ptb")
        pts = [_variant(m, m, 0.0 if m == "dense" else PTB_SPARSITY) for m in ("dense", "static", "set", "snfs", "rigl", "gmp")]
        if plan.methods is not None:
            pts = [p for p in pts if p["label"] in plan.methods or p["label"] == "dense"]
        exps.append(Experiment("ptb", PTB, spec_for(cfg, available(pts, notes), plan.ptb_seeds)))
    for e in exps:
        e.configs = expand(e.spec)
    return exps


def run_experiments(exps: Sequence[Experiment], plan: Plan) -> Dict[str, Any]:
    from sparsetrain.experiments.sweep import run_sweep

    failed, t0 = [], time.time()
    for e in exps:
        log.info("experiment %s: %d runs", e.name, len(e.configs))
        result = run_sweep(e.configs, jobs=plan.jobs, progress=True)
        failed += [f"{o.run_dir}: {o.error}" for o in result.of("failed")]
    return {"failed": failed, "sweep_wall_s": time.time() - t0}


def run_landscape(plan: Plan) -> Optional[Dict[str, Any]]:
    """§5: Static then RigL from it (MNIST LeNet-300-100, 90%, uniform, seed 0)."""
    from sparsetrain.experiments.landscape import paper_experiment

    st = SETTINGS["mnist_lenet300"]
    cfg = base_config(st, plan, plan.runs_dir / "landscape")
    cfg = dataclasses.replace(cfg, sparsity=dataclasses.replace(cfg.sparsity, sparsity=SENS_SPARSITY,
                                                                distribution="uniform"))
    out = plan.docs / "results" / "landscape_mnist_static_to_rigl.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    return paper_experiment(cfg, out, points=21, train_examples=10000)


# --- runtime estimate -----------------------------------------------------------------------------
def calibrate(cfg, steps: int = 300) -> float:
    """Seconds per training step (evaluation included) of ``cfg`` on one thread, from a short run."""
    import tempfile

    import torch
    from sparsetrain.config import load_config
    from sparsetrain.experiments.run_store import train_run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            c = load_config(base=_to_dict(cfg), overrides=(f"out_dir={tmp}", f"train.steps={steps}", "train.epochs=1"))
            s = train_run(c)
    finally:
        torch.set_num_threads(threads)
    return s["wall_time_s"] / steps


def steps_per_epoch(cfg) -> int:
    """Training steps per epoch of ``cfg``'s dataset and batch size (loads the data once)."""
    from sparsetrain.data import load_dataset

    splits = load_dataset(cfg.data.name, cfg.data.root, val_size=cfg.data.val_size, **cfg.data.options)
    return len(splits.train) // cfg.data.batch_size


def estimate(exps: Sequence[Experiment], plan: Plan, overhead_s: float = 4.0) -> str:
    """Core-seconds per experiment from a calibration run per setting; wall ≈ total / jobs."""
    from sparsetrain.experiments.sweep import run_status

    from sparsetrain.train.runner import total_steps

    rate: Dict[str, float] = {}
    spe: Dict[str, int] = {}
    lines, total = [], 0.0
    for e in exps:
        if e.setting.name not in rate:
            rate[e.setting.name] = calibrate(e.configs[0])
            spe[e.setting.name] = steps_per_epoch(e.configs[0])
        todo = [c for c in e.configs if run_status(c) != "finished"]
        secs = sum(total_steps(c, spe[e.setting.name]) * rate[e.setting.name] + overhead_s for c in todo)
        total += secs
        lines.append(f"{e.name:16s} {len(e.configs):4d} runs ({len(todo)} to do)  {secs / 60:7.1f} core-min "
                     f"({rate[e.setting.name] * 1000:.1f} ms/step)")
    lines.append(f"total {total / 60:.1f} core-min; at --jobs {plan.jobs}: about {total / 60 / plan.jobs:.0f} min wall")
    return "\n".join(lines)


# --- records and the page -------------------------------------------------------------------------
RECORDS = ROOT / "docs" / "results" / "data"


def extract_records(root: Path, machine: str, records: Path = RECORDS, prefix: str = "") -> List[str]:
    """Records (docs/results/data/<prefix><folder>.jsonl) of the finished runs in every folder
    of ``root`` that holds runs (e.g. core_full, ptb, lottery, fashion_lr from
    benchmarks/repro_runs.py); existing records of other runs stay. Returns the files written."""
    from sparsetrain.reports.record import extract, write_records

    written = []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        recs = extract(folder, machine)
        if recs:
            path = records / f"{prefix}{folder.name}.jsonl"
            n = write_records(recs, path)
            log.info("%s: %d runs from %s (%d in the file)", path, len(recs), folder, n)
            written.append(str(path))
    return written


def write_page(figures: bool = False, docs: Path = ROOT / "docs") -> Path:
    """``docs``/results.md (and its figures) from the records in ``docs``/results/data alone
    (benchmarks/results_report.py)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import results_report

    out = docs / "results.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(results_report.build(docs / "results" / "data", docs, make_figs=figures))
    return out


def this_machine() -> str:
    import os
    import platform
    return f"{platform.node() or 'this machine'}, {os.cpu_count()} CPU cores"


# --- command line -----------------------------------------------------------------------------------
def parse_args(argv=None) -> Tuple[Plan, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=0.1, help="fraction of each config's epochs (default 0.1)")
    p.add_argument("--setting-scale", action="append", default=[], metavar="NAME=S",
                   help="another scale for one setting (e.g. fashion_lenet5=0.05; ptb_lstm for PTB)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--ptb-seeds", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma list of {', '.join(SETTINGS)}")
    p.add_argument("--sparsities", default=",".join(map(str, SPARSITIES)))
    p.add_argument("--methods", help="only these main variants (dense static set snfs rigl gmp small_dense "
                   "rigl_erk rigl_2x rigl_5x rigl_eqflops), comma separated")
    p.add_argument("--no-sensitivity", action="store_true")
    p.add_argument("--no-ptb", action="store_true")
    p.add_argument("--no-landscape", action="store_true")
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "results"))
    p.add_argument("--docs", default=str(ROOT / "docs"), help="where results.md and results/ go")
    p.add_argument("--estimate", action="store_true", help="print the expected runtime; run nothing")
    p.add_argument("--report-only", action="store_true", help="rebuild docs/results.md from the committed records")
    p.add_argument("--figures", action="store_true", help="with --report-only: redraw the figures too")
    p.add_argument("--extract", metavar="RUNS_ROOT", help="record the finished runs under RUNS_ROOT/<block>/ in "
                   "docs/results/data/<block>.jsonl, then rebuild the page")
    p.add_argument("--machine", help="with --extract: where those runs ran (free text, kept in every record)")
    p.add_argument("--smoke", action="store_true", help="tiny end-to-end check: scale 0.01, 1 seed, static and "
                   "rigl at 90%%, MNIST only, short PTB; writes to runs/smoke and /tmp unless --docs is given")
    a = p.parse_args(argv)
    plan = Plan(scale=a.scale, setting_scale={k: float(v) for k, v in (x.split("=", 1) for x in a.setting_scale)},
                seeds=a.seeds, jobs=a.jobs, settings=tuple(a.settings.split(",")),
                sparsities=tuple(float(s) for s in a.sparsities.split(",")),
                methods=tuple(a.methods.split(",")) if a.methods else None, sensitivity=not a.no_sensitivity,
                ptb=not a.no_ptb, ptb_seeds=a.ptb_seeds, landscape=not a.no_landscape,
                runs_dir=Path(a.runs_dir), docs=Path(a.docs))
    if a.smoke:
        plan = dataclasses.replace(plan, scale=0.01, seeds=1, settings=("mnist_lenet300",), sparsities=(0.9,),
                                   methods=("dense", "static", "rigl"), sensitivity=False,
                                   runs_dir=Path(a.runs_dir) if a.runs_dir != str(ROOT / "runs" / "results")
                                   else ROOT / "runs" / "smoke",
                                   docs=Path(a.docs) if a.docs != str(ROOT / "docs") else Path("/tmp/sparsetrain_smoke_docs"))
    unknown = set(plan.settings) - set(SETTINGS)
    if unknown:
        p.error(f"unknown settings {sorted(unknown)}; choose from {', '.join(SETTINGS)}")
    return plan, a


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    plan, args = parse_args(argv)
    if args.extract:
        if not args.machine:
            print("error: --extract needs --machine TEXT (where the runs ran, e.g. '16-core CPU + H200')",
                  file=sys.stderr)
            return 2
        extract_records(Path(args.extract), args.machine)
    if args.extract or args.report_only:
        log.info("wrote %s", write_page(args.figures))
        return 0
    notes: List[str] = []
    exps = build_experiments(plan, notes)
    if args.estimate:
        print(estimate(exps, plan))
        return 0
    t0 = time.time()
    failed = run_experiments(exps, plan)["failed"]
    if plan.landscape:
        run_landscape(plan)
    for n in notes + [f"failed run: {f}" for f in failed]:
        log.warning(n)
    # this grid's records are kept apart (scale in the name); the page shows the blocks of repro_runs.py
    extract_records(plan.runs_dir, this_machine(), plan.docs / "results" / "data", prefix=f"scale{plan.scale:g}_")
    log.info("wrote %s in %.1f min (%d failed runs)", write_page(True, plan.docs), (time.time() - t0) / 60, len(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
