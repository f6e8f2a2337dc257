"""Reproduce docs/results.md: the RigL paper's claims checked on MNIST / Fashion-MNIST / PTB.

    python benchmarks/results.py --scale 0.1 --seeds 3 --jobs 2        # the documented run
    python benchmarks/results.py --estimate --scale 0.1 --seeds 3 --jobs 2   # time it first
    python benchmarks/results.py --smoke                                 # end-to-end check, minutes

Everything is an ordinary sweep (:mod:`sparsetrain.experiments.sweep`) over the configs in
configs/, so the script is idempotent: rerun it and finished runs are skipped, interrupted ones
resume. Run directories go to ``--runs-dir`` (default runs/results); the report (tables, plots,
claim verdicts) is rebuilt from them alone into docs/results.md and docs/results/.

``--scale`` multiplies every config's training length (configs: 20 epochs for the MNIST-size
settings, 4 epochs for PTB). Experiments (Evci et al., "Rigging the Lottery: Making All Tickets
Winners", ICML 2020):

* main: per setting and sparsity in {80, 90, 95, 98}%: Dense, Static, SET, SNFS, RigL (uniform
  and ERK), gradual magnitude pruning (GMP), Small-Dense, RigL 2× and 5×, and RigL uniform at the
  sparsity whose inference FLOPs equal RigL-ERK's (ERK vs uniform at equal FLOPs);
* sensitivity: RigL (MNIST LeNet-300-100, 90%, uniform) over ΔT ∈ {50,100,500,1000} × α ∈ {0.1,0.3,0.5};
* ptb: word-level PTB LSTM at 75%: Dense, Static, SET, SNFS, RigL, GMP;
* landscape: Static, then RigL started from the Static solution, and the loss on the line between them (§5).

Verdict rule for a claim "A beats B": confirmed when mean(A) − mean(B) exceeds std(A) + std(B)
(seed spreads), not confirmed when B beats A by that margin, inconclusive otherwise (and always
with fewer than two seeds). For "A ≥ B" (extended RigL closing the gap to pruning) a difference
within the spread also confirms, but only while that spread is at most 2 accuracy points: with
seeds that diverged (spreads of tens of points) "within the spread" says nothing, so it is
inconclusive.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
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


# --- claims -------------------------------------------------------------------------------------
def pick(groups, **where):
    """The single group whose config matches ``where`` (dotted keys given with __ for .)."""
    conds = {k.replace("__", "."): v for k, v in where.items()}
    hits = [g for g in groups if all(_same(g.get(k), v) for k, v in conds.items())]
    return hits[0] if hits else None


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) < 1e-6
        except (TypeError, ValueError):
            return False
    return a == b


#: widest seed spread (std(A) + std(B)) at which "A ≥ B within the spread" still confirms: 2 points
AT_LEAST_MAX_BAND = 0.02


def verdict(a, b, metric: str = "test_accuracy", higher: bool = True, at_least: bool = False) -> str:
    """Claim "a beats b" on ``metric`` by the seed-spread rule of the module docstring. With
    ``at_least`` the claim is "a is no worse than b" (a gap closed): within the spread confirms it
    when the spread is at most ``AT_LEAST_MAX_BAND`` (in the metric's units)."""
    if a is None or b is None or metric not in a.stats or metric not in b.stats:
        return "not run"
    sa, sb = a.stats[metric], b.stats[metric]
    if min(sa.n, sb.n) < 2:
        return "inconclusive (1 seed)"
    diff = (sa.mean - sb.mean) * (1 if higher else -1)
    band = sa.std + sb.std
    if -diff > band:
        return "not confirmed"
    if diff > band:
        return "confirmed"
    if at_least:
        return "confirmed" if band <= AT_LEAST_MAX_BAND else "inconclusive (seed spread too large)"
    return "inconclusive"


def _cell(g, metric: str = "test_accuracy") -> str:
    from sparsetrain.reports.tables import show_stat
    return "–" if g is None or metric not in g.stats else f"{show_stat(metric, g.stats[metric])} (n={g.n})"


def _rigl(groups, s, **extra):
    return pick(groups, sparsity__method="rigl", sparsity__sparsity=s, train__multiplier=extra.pop("m", 1.0),
                sparsity__distribution=extra.pop("d", "uniform"), **extra)


def claim_rows(groups, sparsities, eq_flops: Dict[float, Optional[float]]) -> List[Tuple[str, str, str, str, str]]:
    """(claim, sparsity, A, B, verdict) rows of the main-experiment claims for one setting;
    ``eq_flops``: sparsity -> the uniform sparsity with ERK's FLOPs (absent: equal already;
    None: unreachable)."""
    rows = []
    for s in sparsities:
        rigl, erk = _rigl(groups, s), _rigl(groups, s, d="erk")
        st = {m: pick(groups, sparsity__method=m, sparsity__sparsity=s) for m in ("static", "set", "snfs", "gmp")}
        pairs = [("RigL > SET", rigl, st["set"]), ("RigL > Static", rigl, st["static"]),
                 ("SET > Static", st["set"], st["static"]), ("RigL > SNFS", rigl, st["snfs"]),
                 ("ERK > uniform (equal params)", erk, rigl),
                 ("RigL 2× ≥ GMP", _rigl(groups, s, m=2.0), st["gmp"]),
                 ("RigL 5× ≥ GMP", _rigl(groups, s, m=5.0), st["gmp"])]
        untestable = []
        if s in eq_flops and eq_flops[s] is None:
            untestable.append(("ERK > uniform (equal FLOPs)", f"{s:g}", _cell(erk), "–",
                               "not testable: uniform (dense first layer) cannot get down to ERK's FLOPs"))
        elif s in eq_flops:
            pairs.append((f"ERK > uniform (equal FLOPs: uniform at {eq_flops[s]:g})", erk, _rigl(groups, eq_flops[s])))
        else:  # all-FC models: FLOPs follow the nonzeros, so equal params already means equal FLOPs
            pairs[4] = ("ERK > uniform (equal params = equal FLOPs)", erk, rigl)
        rows += [(name, f"{s:g}", _cell(a), _cell(b), verdict(a, b, at_least="≥" in name)) for name, a, b in pairs]
        rows += untestable
    return rows


def flops_rows(groups, sparsities) -> List[Tuple[str, str, str]]:
    """RigL vs SNFS training FLOPs (× dense), measured by the runs' FLOPs meter."""
    rows = []
    for s in sparsities:
        r, n = _rigl(groups, s), pick(groups, sparsity__method="snfs", sparsity__sparsity=s)
        if r and n and "train_flops_ratio" in r.stats and "train_flops_ratio" in n.stats:
            a, b = r.stats["train_flops_ratio"].mean, n.stats["train_flops_ratio"].mean
            rows.append((f"{s:g}", f"{a:.4f}", f"{b:.4f}", "confirmed" if a < b else "not confirmed"))
    return rows


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def sensitivity_table(groups) -> str:
    """Accuracy (mean ± std) pivoted over ΔT (rows) × α (columns)."""
    rows = []
    for d in DELTA_TS:
        cells = []
        for a in ALPHAS:
            g = next((g for g in groups if _options(g).get("delta_t") == d and _same(_options(g).get("alpha"), a)), None)
            cells.append(_cell(g))
        rows.append([f"ΔT={d}"] + cells)
    return _table(["", *(f"α={a}" for a in ALPHAS)], rows)


def _options(g) -> Dict[str, Any]:
    """The method options of a report group (flattened to sparsity.options.<name> there)."""
    prefix = "sparsity.options."
    return {k[len(prefix):]: v for k, v in g.config.items() if k.startswith(prefix)}


def sensitivity_updates_note(root: Path) -> str:
    """How many mask updates each ΔT really made (RigL counts one dense-gradient step per
    update): at this scale a large ΔT may start after T_end, i.e. train as Static."""
    from sparsetrain.reports import load_runs
    seen: Dict[int, int] = {}
    for r in load_runs(root) if root.is_dir() else []:
        if r.summary:
            seen.setdefault(r.config.get("sparsity.options.delta_t"), r.summary.get("train_flops_dense_grad_steps", 0))
    parts = [f"ΔT={d}: {n}" for d, n in sorted(seen.items()) if d is not None]
    return "Mask updates per run (dense-gradient steps): " + ", ".join(parts) + (
        ". A ΔT whose first update (step ΔT) falls after T_end makes none, so its row is Static." if
        any(n == 0 for n in seen.values()) else ".")


def sensitivity_verdict(groups) -> str:
    """Paper: ΔT=100 with α=0.3 or 0.5 is best. Confirmed if the best cell is one of those,
    inconclusive if it beats them only within the seed spread, not confirmed otherwise."""
    scored = [g for g in groups if "test_accuracy" in g.stats]
    if not scored:
        return "not run"
    best = max(scored, key=lambda g: g.stats["test_accuracy"].mean)
    refs = [g for g in scored if _options(g).get("delta_t") == 100 and any(_same(_options(g).get("alpha"), a) for a in (0.3, 0.5))]
    if best in refs:
        v = "confirmed"
    elif not refs:
        v = "not run"
    else:
        v = "not confirmed" if all(verdict(best, r) == "confirmed" for r in refs) else "inconclusive"
    o = _options(best)
    return f"best ΔT={o.get('delta_t')}, α={o.get('alpha')}: {_cell(best)} → {v}"


def landscape_verdict(curve: Optional[Dict[str, Any]]) -> str:
    """Paper §5: a loss barrier separates the Static solution from the RigL solution."""
    if not curve:
        return "not run"
    losses = curve["train_loss"]
    barrier = max(losses) - max(losses[0], losses[-1])
    v = "confirmed" if barrier > 0.01 * max(losses[0], 1e-8) else "not confirmed"
    return (f"train loss Static {losses[0]:.4f}, RigL {losses[-1]:.4f}, max on the line {max(losses):.4f} "
            f"(barrier {barrier:+.4f}) → {v}")


# --- the document ----------------------------------------------------------------------------------
MAIN_METRICS = ("test_accuracy", "achieved_sparsity", "train_flops_ratio", "inference_flops_ratio")
PTB_METRICS = ("test_perplexity", "achieved_sparsity", "train_flops_ratio")


def _section(title: str, groups, figs_dir: Path, docs: Path, metrics, sparsities=(0.9,)) -> List[str]:
    from sparsetrain.reports import figures_for, markdown_table

    lines = [f"### {title}", "", markdown_table(groups, metrics=metrics)]
    for t, p in figures_for(groups, figs_dir, sparsities=sparsities):
        lines += [f"![{t}]({p.relative_to(docs).as_posix()})", ""]
    return lines


def _groups(path: Path):
    from sparsetrain.reports import group_runs, load_runs
    return group_runs(load_runs(path)) if path.is_dir() else []


def _total_compute(root: Path) -> float:
    from sparsetrain.reports import load_runs
    return sum(r.summary.get("wall_time_s", 0.0) for r in load_runs(root) if r.finished) if root.is_dir() else 0.0


def write_results(plan: Plan, exps: Sequence[Experiment], notes: List[str], curve, command: str,
                  elapsed_s: float = 0.0) -> Path:
    """docs/results.md from the run directories alone (plus the landscape curve)."""
    docs, figs = plan.docs, plan.docs / "results"
    verdicts: List[str] = []
    lines = ["# Results: the RigL paper's claims at small scale", "",
             f"Regenerate with `{command}` (idempotent: finished runs are reused). "
             "Accuracies in percent, mean ± sample std over seeds (n seeds). "
             "Verdict rule: *A > B* is confirmed when mean(A) − mean(B) > std(A) + std(B), "
             "not confirmed when the reverse holds, inconclusive otherwise; *A ≥ B* is also "
             "confirmed within the spread when the spread is at most 2 points. One seed is always "
             "inconclusive.", ""]
    lines += ["## Methods at equal sparsity", ""]
    for name in plan.settings:
        groups = _groups(plan.runs_dir / name)
        if not groups:
            continue
        lines += _section(SETTINGS[name].title, groups, figs / name, docs, MAIN_METRICS)
        eq = next((e.eq_flops for e in exps if e.name == name), {})
        rows = claim_rows(groups, plan.sparsities, eq)
        lines += [f"Claims, {SETTINGS[name].title}:", "", _table(["claim", "sparsity", "A", "B", "verdict"], rows)]
        verdicts += [f"{SETTINGS[name].title}, {r[1]}: {r[0]} — {r[4]}" for r in rows]
        fr = flops_rows(groups, plan.sparsities)
        if fr:
            lines += ["RigL's training FLOPs below SNFS's (× dense training, measured):", "",
                      _table(["sparsity", "RigL", "SNFS", "verdict"], fr)]
            verdicts += [f"{SETTINGS[name].title}, {r[0]}: RigL FLOPs < SNFS FLOPs — {r[3]}" for r in fr]
    sens = _groups(plan.runs_dir / "sensitivity")
    if sens:
        v = sensitivity_verdict(sens)
        lines += ["## Sensitivity to ΔT and α (RigL, MNIST LeNet-300-100, 90%, uniform)", "",
                  sensitivity_table(sens), sensitivity_updates_note(plan.runs_dir / "sensitivity"), "",
                  f"Paper: ΔT=100 with α=0.3 or 0.5 is best. Here: {v}.", ""]
        verdicts.append(f"ΔT/α sensitivity — {v}")
    ptb = _groups(plan.runs_dir / "ptb")
    if ptb:
        lines += ["## Language model (PTB, LSTM, 75%)", ""] + _section(PTB.title, ptb, figs / "ptb", docs, PTB_METRICS, (PTB_SPARSITY,))
        rigl = pick(ptb, sparsity__method="rigl")
        for m in ("static", "set", "snfs", "gmp"):
            v = verdict(rigl, pick(ptb, sparsity__method=m), "test_perplexity", higher=False)
            verdicts.append(f"PTB 75%: RigL perplexity < {m} — {v}")
    if curve:
        v = landscape_verdict(curve)
        png = figs / "landscape_mnist_static_to_rigl.png"
        lines += ["## Loss landscape (§5): Static → RigL started from Static", "",
                  f"![landscape]({png.relative_to(docs).as_posix()})", "", f"{v}.", ""]
        verdicts.append(f"Static→RigL loss barrier — {v}")
    hours = _total_compute(plan.runs_dir) / 3600
    lines += ["## Lottery tickets: Gem-Miner vs IMP vs pruning at init", "",
              "Ticket accuracy, time-to-ticket (epochs, wall time, training FLOPs) and the sanity checks "
              "of IMP, Gem-Miner, edge-popup, SNIP, GraSP, SynFlow and random masks on MNIST "
              "LeNet-300-100 at 95% are in [lottery.md](lottery.md), produced by "
              "`python benchmarks/lottery_mnist.py --data-dir ../shared/data`.", ""]
    lines += ["## Closing note", "", f"Total compute: {hours:.2f} run-hours, the sum of every run's own wall "
              f"time (runs went {plan.jobs} at a time on this machine; scale {plan.scale:g}"
              + "".join(f", {k} {v:g}" for k, v in plan.setting_scale.items()) + f", seeds {plan.seeds}); "
              f"the last invocation of the script took {elapsed_s / 60:.1f} min.", ""]
    lines += [f"- {v}" for v in verdicts] + [""]
    if notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    out = docs / "results.md"
    out.write_text("\n".join(lines))
    return out


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
    p.add_argument("--report-only", action="store_true", help="rebuild the document from existing runs")
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
    notes: List[str] = []
    command = "python benchmarks/results.py " + " ".join(sys.argv[1:] if argv is None else argv)
    exps = build_experiments(plan, notes)
    if args.estimate:
        print(estimate(exps, plan))
        return 0
    t0 = time.time()
    failed = [] if args.report_only else run_experiments(exps, plan)["failed"]
    curve = None
    saved = plan.docs / "results" / "landscape_mnist_static_to_rigl.json"
    if plan.landscape and not args.report_only:
        curve = run_landscape(plan)
    elif plan.landscape and saved.exists():
        curve = json.loads(saved.read_text())
    notes += [f"failed run: {f}" for f in failed]
    out = write_results(plan, exps, notes, curve, command.strip(), time.time() - t0)
    log.info("wrote %s in %.1f min (%d failed runs)", out, (time.time() - t0) / 60, len(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
