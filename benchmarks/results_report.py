"""docs/results.md (and its figures) from the committed run records alone.

    PYTHONPATH=src python benchmarks/results_report.py              # docs/results.md
    PYTHONPATH=src python benchmarks/results_report.py --figures    # and the PNGs under docs/results/

Input: docs/results/data/<block>.jsonl (one record per finished run, made from run directories by
``python benchmarks/results.py --extract RUNS_ROOT --machine TEXT``; see
:mod:`sparsetrain.reports.record`), the hand-written commentary docs/results/commentary.md and the
landscape curve docs/results/landscape_mnist_static_to_rigl.json. Nothing else: no run directory
is read, so the page regenerates byte for byte from what is committed (tests/benchmarks pins it).

Every claim and its margin is declared below (``CORE``, ``PTB``, ``LOTTERY``, ``FASHION``) before
any run; the verdicts come from :mod:`sparsetrain.reports.stats` (one-sided Welch t-test at 5 % for
"A > B"; for "A ≥ B" the 95 % interval of mean(A) − mean(B) against −margin; at least 5 seeds).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DATA = DOCS / "results" / "data"
COMMENTARY = DOCS / "results" / "commentary.md"
LANDSCAPE = DOCS / "results" / "landscape_mnist_static_to_rigl.json"
COMMAND = "PYTHONPATH=src python benchmarks/results_report.py --figures"


# --- reading the records ------------------------------------------------------------------------
def load(block: str, data: Path = DATA):
    """The runs recorded for ``block`` (empty when there is no record file)."""
    from sparsetrain.reports.record import read_records
    path = data / f"{block}.jsonl"
    return read_records(path) if path.is_file() else []


def _dig(d: Any, *keys: str) -> Optional[float]:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return None if d is None else float(d)


def _pct(x: Optional[float]) -> Optional[float]:
    return None if x is None else 100.0 * x


#: metric name -> (reader of a run's summary, whether higher is better); accuracies in percent
METRICS: Dict[str, Tuple[Callable[[dict], Optional[float]], bool]] = {
    "test_accuracy": (lambda s: _pct(_dig(s, "final", "test", "accuracy")), True),
    "val_accuracy": (lambda s: _pct(_dig(s, "final", "val", "accuracy")), True),
    "test_perplexity": (lambda s: _dig(s, "final", "test", "perplexity"), False),
    "ticket_accuracy": (lambda s: _pct(_dig(s, s.get("method", ""), "ticket", "test_accuracy")), True),
    "shuffle": (lambda s: _pct(_dig(s, "sanity", "checks", "shuffle", "test_accuracy")), True),
    "reinit": (lambda s: _pct(_dig(s, "sanity", "checks", "reinit", "test_accuracy")), True),
    "invert": (lambda s: _pct(_dig(s, "sanity", "checks", "invert", "test_accuracy")), True),
    "ticket_epochs": (lambda s: _dig(s, "time_to_ticket", "epochs"), False),
    "train_flops_ratio": (lambda s: _dig(s, "train_flops_ratio"), False),
    "inference_flops_ratio": (lambda s: _dig(s, "inference_flops_ratio"), False),
    "achieved_sparsity": (lambda s: _dig(s, "achieved_sparsity"), True),
    "wall_time_s": (lambda s: _dig(s, "wall_time_s"), False),
}


def matches(run, where: Dict[str, Any]) -> bool:
    for k, v in where.items():
        got = run.config.get(k)
        if isinstance(v, float) or isinstance(got, float):
            if not isinstance(got, (int, float)) or abs(float(got) - float(v)) > 1e-6:
                return False
        elif got != v:
            return False
    return True


def values(runs, where: Dict[str, Any], metric: str) -> List[float]:
    """``metric`` of every run matching ``where``, in seed order (runs without it left out)."""
    read = METRICS[metric][0]
    hits = sorted((r for r in runs if matches(r, where)), key=lambda r: r.seed)
    return [v for v in (read(r.summary) for r in hits) if v is not None and not math.isnan(v)]


# --- formatting -----------------------------------------------------------------------------------
def fmt(x: Optional[float], digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def mean_sd(xs: Sequence[float], digits: int = 2) -> str:
    """``mean ± sd (n)``; the sd is the sample standard deviation."""
    if not xs:
        return "–"
    import statistics
    m = statistics.fmean(xs)
    sd = statistics.stdev(xs) if len(xs) > 1 else math.nan
    return f"{m:.{digits}f} ± {fmt(sd, digits)} (n={len(xs)})"


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


# --- claims ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    """"A > B" (``margin`` None) or "A ≥ B" within ``margin`` on ``metric``; ``a``/``b`` select runs
    by flat config keys (``b_metric`` reads B from another metric of the same runs, e.g. a
    sanity-check variant). ``paper`` is the paper's own figure for it."""

    name: str
    a: Dict[str, Any]
    b: Dict[str, Any]
    metric: str = "test_accuracy"
    margin: Optional[float] = None
    b_metric: Optional[str] = None
    paper: str = ""


@dataclass
class Verdict:
    claim: Claim
    where: str
    a: List[float]
    b: List[float]
    text: str
    ci: str = "–"
    test: str = "–"


def decide(claim: Claim, runs, extra: Dict[str, Any], where: str) -> Verdict:
    """The claim tested on ``runs`` restricted to ``extra`` (e.g. the sparsity)."""
    from sparsetrain.reports.stats import MIN_SEEDS, non_inferiority, superiority, too_few, welch

    a = values(runs, {**claim.a, **extra}, claim.metric)
    b = values(runs, {**claim.b, **extra}, claim.b_metric or claim.metric)
    if not a or not b:
        return Verdict(claim, where, a, b, "not run")
    higher = METRICS[claim.metric][1]
    if min(len(a), len(b)) < 2:
        return Verdict(claim, where, a, b, f"inconclusive (n<{MIN_SEEDS})")
    c = welch(a, b, higher_is_better=higher)
    digits = 2
    ci = f"{c.diff:+.{digits}f} [{c.ci_low:+.{digits}f}, {c.ci_high:+.{digits}f}]"
    if claim.margin is None:
        test = f"Welch t={c.t:.2f}, df={c.df:.1f}, p={c.p_greater:.3g}" if math.isfinite(c.df) else "no spread"
        text = superiority(c)
    else:
        test = f"lower end vs −{claim.margin:g}"
        text = non_inferiority(c, claim.margin)
    return Verdict(claim, where, a, b, too_few(a, b) or text, ci, test)


def verdict_rows(vs: Sequence[Verdict], digits: int = 2) -> List[List[str]]:
    return [[v.claim.name + (f" (margin {v.claim.margin:g})" if v.claim.margin is not None else ""), v.where,
             mean_sd(v.a, digits), mean_sd(v.b, digits), v.ci, v.test, v.text] for v in vs]


VERDICT_HEAD = ["claim", "where", "A: mean ± sd (n)", "B: mean ± sd (n)", "A − B [95 % CI]", "test", "verdict"]

M, S, D, X = "sparsity.method", "sparsity.sparsity", "sparsity.distribution", "train.multiplier"
RIGL = {M: "rigl", D: "uniform", X: 1.0}
# RigL paper: Evci et al., ICML 2020, Table 2 (ResNet-50 on ImageNet, top-1 %, at 80 % / 90 % sparsity)
CORE = (
    Claim("RigL > SET", RIGL, {M: "set"}, paper="74.6 vs 72.9 / 72.0 vs 69.6"),
    Claim("RigL > Static", RIGL, {M: "static"}, paper="74.6 vs 70.6 / 72.0 vs 65.8"),
    Claim("SET > Static", {M: "set"}, {M: "static"}, paper="72.9 vs 70.6 / 69.6 vs 65.8"),
    Claim("ERK > uniform (RigL; equal parameters, which for an MLP is equal FLOPs)", {**RIGL, D: "erk"}, RIGL,
          paper="75.1 vs 74.6 / 73.0 vs 72.0"),
    Claim("RigL 5× ≥ GMP", {**RIGL, X: 5.0}, {M: "gmp"}, margin=0.3, paper="76.6 vs 75.6 / 75.7 vs 73.9"),
)
CORE_SPARSITIES = (0.9, 0.95, 0.98)
PTB_SPARSITIES = (0.75, 0.9)
RNN = "char-level GRU on WikiText-103 (§4.3; a figure, not quoted)"
PTB = (
    Claim("RigL > Static (perplexity)", {M: "rigl"}, {M: "static"}, "test_perplexity", paper=RNN),
    Claim("RigL > SET (perplexity)", {M: "rigl"}, {M: "set"}, "test_perplexity", paper=RNN),
    Claim("SET > Static (perplexity)", {M: "set"}, {M: "static"}, "test_perplexity", paper=RNN),
    Claim("RigL ≥ SNFS (perplexity)", {M: "rigl"}, {M: "snfs"}, "test_perplexity", margin=5.0, paper=RNN),
)
LOTTERY_SPARSITIES = (0.9, 0.95, 0.98)
GM, EP, IMP = {M: "gem_miner"}, {M: "edge_popup"}, {M: "imp"}
# Gem-Miner paper: Sreenivasan et al., NeurIPS 2022 (ResNet-20 on CIFAR-10; /work/shared/REFERENCE.md §3.3)
LOTTERY = (
    Claim("Gem-Miner ≥ IMP (after weight training)", GM, IMP, margin=0.5,
          paper="Table 4, 1.4 % density: 77.89 vs 74.52"),
    Claim("Gem-Miner ticket > edge-popup ticket (before weight training)", GM, EP, "ticket_accuracy",
          paper="Table 3, 0.59 %: 45.30 vs 19.57"),
    Claim("Gem-Miner > its shuffled mask", GM, GM, b_metric="shuffle", paper="Table 2, 3.72 %: 83.4 vs 78.73"),
    Claim("Gem-Miner > its re-initialised weights", GM, GM, b_metric="reinit", paper="Table 2, 3.72 %: 83.4 vs 78.6"),
    Claim("IMP > its shuffled mask", IMP, IMP, b_metric="shuffle", paper="(Frankle et al. 2021: IMP passes)"),
)
FASHION_SPARSITIES = (0.95, 0.98)
FASHION = tuple(Claim(c.name, {M: c.a[M]}, {M: c.b[M]}, paper=c.paper) for c in CORE[:3])


def claim_table(claims, runs, sparsities, digits: int = 2) -> Tuple[str, List[Verdict]]:
    vs = [decide(c, runs, {S: s}, f"{s:g}") for c in claims for s in sparsities]
    return table(VERDICT_HEAD, verdict_rows(vs, digits)), vs


# --- sections -------------------------------------------------------------------------------------
def results_table(runs, rows: Sequence[Tuple[str, Dict[str, Any]]], cols: Sequence[Tuple[str, str, int]]) -> str:
    """One row per (label, selector) with ``mean ± sd (n)`` of each (title, metric, digits) column."""
    body = []
    for label, where in rows:
        cells = [mean_sd(values(runs, where, m), d) for _, m, d in cols]
        if any(c != "–" for c in cells):
            body.append([label] + cells)
    return table(["run"] + [t for t, _, _ in cols], body) if body else "(no runs recorded)\n"


def figures(runs, name: str, sparsity: float, make: bool, docs: Path) -> List[str]:
    """Markdown image links of the setting's committed figures, drawn first when ``make`` (the
    links are the same either way: the files in docs/results/<name>/, sorted)."""
    from sparsetrain.reports import figures_for, group_runs
    out_dir = docs / "results" / name
    if make:
        for old in out_dir.glob("*.png"):
            old.unlink()  # figures of runs no longer recorded must not linger
        if runs:
            figures_for(group_runs(runs), out_dir, sparsities=(sparsity,))
    lines = []
    for path in sorted(out_dir.glob("*.png")):
        lines += [f"![{path.stem}]({path.relative_to(docs).as_posix()})", ""]
    return lines


CORE_ROWS = [("Dense", {M: "dense"})] + [
    (f"{lab} {s:g}", {**w, S: s}) for s in CORE_SPARSITIES for lab, w in (
        ("Static", {M: "static"}), ("SET", {M: "set"}), ("RigL", RIGL), ("RigL ERK", {**RIGL, D: "erk"}),
        ("GMP", {M: "gmp"}), ("RigL 5×", {**RIGL, X: 5.0}))]
ACC_COLS = [("test accuracy (%)", "test_accuracy", 2), ("training FLOPs (× dense)", "train_flops_ratio", 4),
            ("inference FLOPs (× dense)", "inference_flops_ratio", 4), ("achieved sparsity", "achieved_sparsity", 4)]


def core_section(runs, make_figs: bool, docs: Path) -> Tuple[List[str], List[Verdict]]:
    claims, vs = claim_table(CORE, runs, CORE_SPARSITIES)
    lines = ["## 1. Core claims at full scale: MNIST, LeNet-300-100", "",
             "configs/mnist_lenet300.toml as it stands (20 epochs, batch 100, SGD 0.1 Nesterov, cosine, "
             "ΔT 100, α 0.3, T_end at 75 %), seeds 0–4, every method uniform unless ERK is named "
             "(record: docs/results/data/core_full.jsonl).", "", results_table(runs, CORE_ROWS, ACC_COLS),
             "Claims:", "", claims]
    lines += figures(runs, "core_full", 0.9, make_figs, docs)
    return lines, vs


PTB_ROWS = [("Dense", {M: "dense"})] + [(f"{m} {s:g}", {M: m.lower(), S: s}) for s in PTB_SPARSITIES
                                        for m in ("Static", "SET", "RigL", "SNFS", "GMP")]
PTB_COLS = [("test perplexity", "test_perplexity", 1), ("training FLOPs (× dense)", "train_flops_ratio", 4),
            ("achieved sparsity", "achieved_sparsity", 4)]


def ptb_section(runs, make_figs: bool, docs: Path) -> Tuple[List[str], List[Verdict]]:
    epochs = sorted({r.config.get("train.epochs") for r in runs}) or [1.0]  # the planned scale when not run
    claims, vs = claim_table(PTB, runs, PTB_SPARSITIES, digits=1)
    lines = ["## 2. Language model: word-level PTB, LSTM", "",
             f"configs/ptb_lstm.toml (embedding 128, LSTM 256, Adam 7e-4, batch 20 × 35) for {', '.join(f'{e:g}' for e in epochs)} "
             "epoch(s), uniform sparsity, seeds 0–2 (record: docs/results/data/ptb.jsonl). RigL > B means "
             "RigL's perplexity is lower; the SNFS margin is 5 perplexity points.", "",
             results_table(runs, PTB_ROWS, PTB_COLS), "Claims:", "", claims]
    flops = []
    for s in PTB_SPARSITIES:
        a, b = values(runs, {M: "rigl", S: s}, "train_flops_ratio"), values(runs, {M: "snfs", S: s}, "train_flops_ratio")
        if a and b:
            flops.append([f"{s:g}", fmt(a[0], 4), fmt(b[0], 4), "confirmed" if max(a) < min(b) else "not confirmed"])
    if flops:
        lines += ["Training FLOPs (× dense, measured by the runs' FLOPs meter; the same for every seed):", "",
                  table(["sparsity", "RigL", "SNFS", "RigL < SNFS"], flops)]
    lines += figures(runs, "ptb", 0.75, make_figs, docs)
    return lines, vs


LOTTERY_NAMES = (("IMP", "imp"), ("Gem-Miner", "gem_miner"), ("edge-popup", "edge_popup"), ("SNIP", "snip"),
                 ("GraSP", "grasp"), ("SynFlow", "synflow"), ("random (static)", "static"))
LOTTERY_COLS = [("test acc. (%)", "test_accuracy", 2), ("ticket acc. before weight training (%)", "ticket_accuracy", 2),
                ("epochs to ticket", "ticket_epochs", 2), ("shuffle (%)", "shuffle", 2), ("reinit (%)", "reinit", 2),
                ("invert (%)", "invert", 2)]


def lottery_section(runs) -> Tuple[List[str], List[Verdict]]:
    rows = [("dense", {M: "dense"})] + [(f"{lab} {s:g}", {M: m, S: s}) for s in LOTTERY_SPARSITIES
                                        for lab, m in LOTTERY_NAMES]
    claims, vs = claim_table(LOTTERY, runs, LOTTERY_SPARSITIES)
    speed = []
    for s in LOTTERY_SPARSITIES:
        i, g = values(runs, {**IMP, S: s}, "ticket_epochs"), values(runs, {**GM, S: s}, "ticket_epochs")
        if i and g and min(g) > 0:
            speed.append([f"{s:g}", fmt(i[0], 1), fmt(g[0], 1), f"{i[0] / g[0]:.1f}×"])
    lines = ["## 3. Lottery tickets: Gem-Miner vs IMP vs pruning at initialisation", "",
             "MNIST, LeNet-300-100, ERK, the recipe of benchmarks/lottery_mnist.py: every weight training "
             "lasts 3 epochs (batch 128, SGD 0.1 Nesterov, cosine, wd 1e-4); IMP trains each round that long "
             "(20 % of the remaining weights per round), Gem-Miner and edge-popup mine for 6 epochs and then "
             "fine-tune. Seeds 0–2 (record: docs/results/data/lottery.jsonl). Sanity checks (Frankle et al. "
             "2021): the mask shuffled within each layer, the weights re-drawn, or the lowest scores kept "
             "(invert), each retrained for 3 epochs; a ticket that passes loses accuracy under them.", "",
             results_table(runs, rows, LOTTERY_COLS), "Claims:", "", claims]
    if speed:
        lines += ["Training until the mask is final (epochs; set by the schedules, the same for every seed; "
                  "paper, Table 1 at 1.4 % density: IMP 2850 vs Gem-Miner 150 epochs, 19×):", "",
                  table(["sparsity", "IMP", "Gem-Miner", "IMP / Gem-Miner"], speed)]
    return lines, vs


FASHION_METHODS = (("Dense", "dense"), ("Static", "static"), ("SET", "set"), ("RigL", "rigl"), ("GMP", "gmp"))
COLLAPSE = 11.0  # test accuracy (%) at or below which a 10-class run has collapsed to chance


def chosen_lrs(runs) -> Dict[Tuple[str, float], float]:
    """(method, sparsity) -> the learning rate with the highest mean validation accuracy, among
    the rates run with the most seeds for that setting (a rate tried on fewer seeds is not chosen
    on a smaller sample)."""
    import statistics
    out = {}
    for _, m in FASHION_METHODS:
        for s in (0.0,) if m == "dense" else FASHION_SPARSITIES:
            per = {lr: values(runs, {M: m, S: s, "optim.lr": lr}, "val_accuracy")
                   for lr in sorted({r.config.get("optim.lr") for r in runs})}
            per = {lr: v for lr, v in per.items() if v}
            if per:
                most = max(len(v) for v in per.values())
                out[(m, s)] = max((lr for lr, v in per.items() if len(v) == most),
                                  key=lambda lr: statistics.fmean(per[lr]))
    return out


def dense_last_table(runs) -> List[str]:
    """Runs with the output layer kept dense (``sparsity.dense_last``), per method and rate."""
    rows = []
    for lab, m in FASHION_METHODS:
        for lr in sorted({r.config.get("optim.lr") for r in runs}, reverse=True):
            t = values(runs, {M: m, S: 0.98, "optim.lr": lr}, "test_accuracy")
            v = values(runs, {M: m, S: 0.98, "optim.lr": lr}, "val_accuracy")
            sp = values(runs, {M: m, S: 0.98, "optim.lr": lr}, "achieved_sparsity")
            if t:
                rows.append([f"{lab} 0.98", f"{lr:g}", fmt(sp[0], 4), mean_sd(v), mean_sd(t),
                             str(sum(x <= COLLAPSE for x in t))])
    if not rows:
        return []
    return ["The same at 98 % with the 10-way output layer kept dense (`sparsity.dense_last=true`; under "
            "the uniform rule it otherwise keeps 2 % of its 840 weights, 17 for 10 classes). The dense first "
            "and last layers lower the sparsity actually reached, so this is not the same budget:", "",
            table(["run", "lr", "achieved sparsity", "val. acc. (%)", "test acc. (%)", "collapsed"], rows)]


def fashion_section(runs) -> Tuple[List[str], List[Verdict]]:
    runs, dense_last = ([r for r in runs if bool(r.config.get("sparsity.dense_last")) is flag] for flag in (False, True))
    lrs = sorted({r.config.get("optim.lr") for r in runs}, reverse=True)
    chosen = chosen_lrs(runs)
    search, final = [], []
    for lab, m in FASHION_METHODS:
        for s in (0.0,) if m == "dense" else FASHION_SPARSITIES:
            cells = []
            for lr in lrs:
                v = values(runs, {M: m, S: s, "optim.lr": lr}, "val_accuracy")
                t = values(runs, {M: m, S: s, "optim.lr": lr}, "test_accuracy")
                dead = sum(x <= COLLAPSE for x in t)
                cells.append(mean_sd(v) + (f", {dead} collapsed" if dead else ""))
            if any(c != "–" for c in cells):
                search.append([f"{lab} {s:g}"] + cells)
            if (m, s) in chosen:
                lr = chosen[(m, s)]
                t = values(runs, {M: m, S: s, "optim.lr": lr}, "test_accuracy")
                old = values(runs, {M: m, S: s, "optim.lr": 0.1}, "test_accuracy")
                final.append([f"{lab} {s:g}", f"{lr:g}", mean_sd(t), mean_sd(old),
                              str(sum(x <= COLLAPSE for x in old))])
    # the claims at each setting's chosen learning rate
    picked = [r for r in runs if chosen.get((r.config.get(M), r.config.get(S))) == r.config.get("optim.lr")]
    claims, vs = claim_table(FASHION, picked, FASHION_SPARSITIES)
    epochs = sorted({r.config.get("train.epochs") for r in runs})
    lines = ["## 4. Fashion-MNIST, LeNet-5: the learning rate chosen on a validation split", "",
             "The shared recipe (configs/fashion_lenet5.toml: SGD lr 0.1 Nesterov, cosine, no warm-up) made many "
             "LeNet-5 runs at 95–98 % collapse to chance (10 %). Here the learning rate is chosen per method "
             "and sparsity on 10,000 training images held out for validation (`data.val_size=10000`; the "
             "test set is not looked at): among the rates run with the most seeds, the one with the highest "
             f"mean validation accuracy wins. {', '.join(f'{e:g}' for e in epochs)} epochs, no warm-up, every other setting as in the "
             "config (record: docs/results/data/fashion_lr.jsonl). A run has *collapsed* when its test "
             f"accuracy is at most {COLLAPSE:g} %.", "",
             "Validation accuracy (%) per learning rate:", "",
             table(["run"] + [f"lr {lr:g}" for lr in lrs], search) if search else "(no runs recorded)\n",
             "Test accuracy (%) at the chosen rate, and of the old recipe (lr 0.1) on the same split:", "",
             table(["run", "chosen lr", "test acc. at the chosen lr", "test acc. at lr 0.1 (old recipe)",
                    "collapsed at lr 0.1"], final) if final else "(no runs recorded)\n",
             "Claims at the chosen learning rates:", "", claims] + dense_last_table(dense_last)
    return lines, vs


def landscape_section(path: Path) -> List[str]:
    if not path.is_file():
        return []
    curve = json.loads(path.read_text())
    losses = curve["train_loss"]
    barrier = max(losses) - max(losses[0], losses[-1])
    v = "confirmed" if barrier > 0.01 * max(losses[0], 1e-8) else "not confirmed"
    return ["## 5. Loss landscape (RigL paper §5): Static → RigL started from the Static solution", "",
            "MNIST LeNet-300-100 at 90 %, uniform, one seed, a tenth of the config's epochs (the scale-0.1 "
            "grid of the previous version of this page). Its run directories are gone; what is traceable is "
            "the curve, docs/results/landscape_mnist_static_to_rigl.json, written by benchmarks/results.py "
            "together with the figure below.", "", "![landscape](results/landscape_mnist_static_to_rigl.png)", "",
            f"Train loss at Static {losses[0]:.4f}, at RigL {losses[-1]:.4f}, highest on the line "
            f"{max(losses):.4f} (barrier {barrier:+.4f}): a barrier between them → {v} (one seed: a "
            "description, not a test).", ""]


# --- the summary ----------------------------------------------------------------------------------
def summary_rows(groups: Sequence[Tuple[str, Sequence[Verdict]]]) -> List[List[str]]:
    """One line per claim: its verdicts at every sparsity, the paper's figure, ours."""
    rows = []
    for setting, vs in groups:
        by_claim: Dict[str, List[Verdict]] = {}
        for v in vs:
            by_claim.setdefault(v.claim.name, []).append(v)
        for name, cvs in by_claim.items():
            c = cvs[0].claim
            ours = "; ".join(f"{v.where}: {v.ci} (n={len(v.a)}/{len(v.b)})" for v in cvs if v.ci != "–") or "–"
            verdicts = "; ".join(f"{v.where}: {v.text}" for v in cvs)
            rows.append([name, c.paper or "–", setting, ours, verdicts])
    return rows


SUMMARY_HEAD = ["claim", "paper's figure (A vs B)", "setting here", "ours: A − B [95 % CI] (seeds of A/B) per sparsity",
                "verdict per sparsity"]


def total_compute(data: Path, blocks: Sequence[str]) -> List[str]:
    """Run count and run-hours per record file and machine (every run's own wall time, sanity-check
    retraining included)."""
    from sparsetrain.reports.record import read_raw
    lines, total = [], 0.0
    for name in blocks:
        path = data / f"{name}.jsonl"
        per: Dict[Tuple[str, str], List[float]] = {}
        for rec in read_raw(path) if path.is_file() else []:
            s = rec["summary"]
            secs = (s.get("wall_time_s") or 0.0) + sum((s.get("sanity") or {}).get("wall_time_s", {}).values())
            per.setdefault((rec["machine"], rec["device"]), []).append(secs)
        for (machine, device), secs in sorted(per.items()):
            total += sum(secs)
            lines.append(f"- {name}.jsonl: {len(secs)} runs on {device} ({machine}): {sum(secs) / 3600:.2f} run-hours")
    return lines + [f"- total: {total / 3600:.2f} run-hours, the sum of every run's own wall time"]


#: what a block without records is waiting for (estimates from one-thread timings: about 5 ms of
#: CPU per LeNet-300-100 step at batch 100, evaluation included)
NOT_RUN = {
    "core_full": "**Not run yet.** Planned (blocks `core_full` and `rigl5x` of benchmarks/repro_runs.py): Static, "
                 "SET, RigL, RigL ERK and GMP at 90/95/98 % and Dense, 5 seeds each (80 runs of 12,000 steps, "
                 "about 1.3 CPU-hours at one thread per run), and RigL 5× (15 runs, about 1.3 CPU-hours).",
    "ptb": "**Not run yet.** Planned (block `ptb`): Dense, and Static, SET, RigL, SNFS, GMP at 75 % and 90 %, "
           "3 seeds (33 runs). On one CPU thread the softmax over the 10,000-word vocabulary makes each run "
           "take minutes (evaluation alone about 100 s here), so the queue gives these runs to a GPU.",
    "lottery": "**Not run yet.** Planned (blocks `lottery_imp` and `lottery_rest`): 7 methods × 90/95/98 % × "
               "3 seeds with their sanity checks, and Dense per seed (66 runs, about 1 CPU-hour; IMP at 98 % "
               "alone trains 19 rounds). docs/lottery.md holds an older single-seed table at 95 % whose run "
               "directories are gone, so its numbers cannot be traced to records.",
}


def _or_plan(lines: List[str], block: str, runs) -> List[str]:
    """The section, or its header, description and plan when nothing is recorded for it."""
    return lines if runs or block not in NOT_RUN else lines[:3] + ["", NOT_RUN[block], ""]


def build(data: Path = DATA, docs: Path = DOCS, make_figs: bool = False) -> str:
    """The whole page as a string."""
    blocks = {b: load(b, data) for b in ("core_full", "ptb", "lottery", "fashion_lr")}
    core, core_v = core_section(blocks["core_full"], make_figs, docs)
    ptb, ptb_v = ptb_section(blocks["ptb"], make_figs, docs)
    lot, lot_v = lottery_section(blocks["lottery"])
    fas, fas_v = fashion_section(blocks["fashion_lr"])
    core, ptb, lot = (_or_plan(x, b, blocks[b]) for x, b in ((core, "core_full"), (ptb, "ptb"), (lot, "lottery")))
    summary = table(SUMMARY_HEAD, summary_rows([
        ("MNIST LeNet-300-100, 20 epochs (§1)", core_v), ("PTB LSTM (§2)", ptb_v),
        ("MNIST LeNet-300-100, lottery recipe (§3)", lot_v), ("Fashion-MNIST LeNet-5, lr chosen on validation (§4)", fas_v)]))
    commentary = COMMENTARY.read_text() if COMMENTARY.is_file() else ""
    lines = ["# Results: does it reproduce?", "",
             "<!-- Generated from committed records by benchmarks/results_report.py; do not edit by hand: "
             "commentary goes in docs/results/commentary.md. -->", "",
             f"Regenerate this page and its figures from the committed records: `{COMMAND}` "
             "(without `--figures` only the page). The records (docs/results/data/*.jsonl, one line per "
             "finished run: config, seed, final metrics, per-layer densities, FLOPs, wall time, sanity checks) "
             "come from run directories through `PYTHONPATH=src python benchmarks/results.py --extract RUNS_ROOT "
             "--machine TEXT`; the runs themselves from `benchmarks/repro_runs.py` (the queue and its exact "
             "blocks are in benchmarks/repro_device.sh).", "",
             "**How a verdict is reached.** Per claim and sparsity, A and B are the per-seed final test "
             "metrics (accuracy in percent; perplexity, lower is better, for PTB). *A > B*: one-sided Welch "
             "t-test of H0 mean(A) ≤ mean(B) at α = 0.05 — confirmed when p < 0.05, *not confirmed* when the "
             "mirrored test (B > A) is significant, inconclusive otherwise. *A ≥ B*: non-inferiority with the "
             "margin given in the claim (fixed before the runs): confirmed when the lower end of the 95 % "
             "interval of mean(A) − mean(B) is above −margin, not confirmed when its upper end is below "
             "−margin. Fewer than 5 seeds on either side: *inconclusive (n<5)* whatever the numbers (the "
             "interval is still shown). The interval is Welch's (Welch–Satterthwaite degrees of freedom).", "",
             "## What reproduces and what does not", "",
             "The paper's figures come from other models and datasets (RigL: ResNet-50 on ImageNet, Evci et al. "
             "2020, Table 2, at 80 % / 90 % sparsity; Gem-Miner: ResNet-20 on CIFAR-10, Sreenivasan et al. 2022); "
             "what is compared is the direction of each claim, not the numbers.", "", summary]
    if commentary:
        lines += [commentary.rstrip("\n"), ""]
    lines += core + ptb + lot + fas + landscape_section(LANDSCAPE)
    lines += ["## Closing note", "", "The summary table again:", "", summary, "Compute behind this page:", ""]
    lines += total_compute(data, list(blocks)) + [""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--figures", action="store_true", help="also draw the figures (matplotlib)")
    p.add_argument("--data", default=str(DATA), help="folder of the record files")
    p.add_argument("--out", default=str(DOCS / "results.md"))
    a = p.parse_args(argv)
    text = build(Path(a.data), DOCS, a.figures)
    Path(a.out).write_text(text)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main())
