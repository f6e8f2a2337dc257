"""Report plots (matplotlib, object API with the Agg canvas: no global backend is touched).

* accuracy vs sparsity per method (Evci et al. 2020, Fig. 2-style), dense as a horizontal line;
* accuracy vs training FLOPs (relative to dense training; App. H accounting);
* layer-wise densities, uniform vs ERK (§3, "Sparsity distribution");
* drop fraction and density over training (from metrics.jsonl);
* mask churn: the fraction of active connections that are new after each topology update
  (``last_update.churn``, sampled at each evaluation: the latest update before it).

Every function returns the written path, or None (with a reason logged) when the runs hold
nothing to plot.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import ConfigError
from .tables import Group, show_value, varying_keys

log = logging.getLogger(__name__)

FIGURE_KEYS = ("data.name", "model.name")  # one figure per dataset and model
X_KEY = "sparsity.sparsity"


def new_figure(width: float = 6.4, height: float = 4.2, ncols: int = 1):
    """A new (figure, axes) pair on the Agg canvas; ConfigError if matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'sparsetrain[plots]'") from None
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, (axes if ncols > 1 else axes[0])


def save_figure(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _colors(n: int) -> List[Any]:
    from matplotlib import colormaps
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


# --- series: the lines of a figure ------------------------------------------------------------
def is_dense_baseline(g: Group) -> bool:
    """The full-width dense model (a horizontal reference line, not a sparsity series)."""
    return g.get("sparsity.method") == "dense" and float(g.get("model.width", 1.0)) == 1.0


def series_label(g: Group, keys: Sequence[str]) -> str:
    """Readable legend entry: method (Small-Dense for narrow dense models), distribution,
    extended-training multiplier, then any other varying key as key=value."""
    method = g.get("sparsity.method")
    dense = method == "dense"
    parts = ["small_dense" if dense and not is_dense_baseline(g) else str(method)]
    for k in keys:
        v = g.get(k)
        if k in ("sparsity.method", X_KEY) or (dense and k.startswith("sparsity.")) or v is None:
            continue
        if k == "sparsity.distribution":
            parts.append(str(v))
        elif k == "train.multiplier":
            parts.append(f"{float(v):g}×" if float(v) != 1 else "1×")
        elif k == "model.width" and dense:
            continue
        else:
            parts.append(f"{k.split('.')[-1]}={show_value(v)}")
    return " ".join(parts)


def series(groups: Sequence[Group], exclude: Sequence[str] = FIGURE_KEYS + (X_KEY,)) -> Dict[str, List[Group]]:
    """Groups of one figure split into labelled series (everything varying but ``exclude``)."""
    keys = varying_keys(groups, exclude=exclude)
    out: Dict[str, List[Group]] = {}
    for g in groups:
        out.setdefault(series_label(g, keys), []).append(g)
    return out


def primary_metric(groups: Sequence[Group]) -> str:
    """Perplexity for language models (lower is better), else test accuracy."""
    return "test_perplexity" if any("test_perplexity" in g.stats for g in groups) else "test_accuracy"


def _mean_std(g: Group, metric: str) -> Tuple[float, float]:
    st = g.stats[metric]
    return st.mean, 0.0 if math.isnan(st.std) else st.std


def _legend(ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=7, loc="best", ncol=2 if len(handles) > 8 else 1)


# --- accuracy vs sparsity / FLOPs ---------------------------------------------------------------
def plot_metric_vs(groups: Sequence[Group], path: Path, x_of, x_label: str, title: str) -> Optional[Path]:
    """One line per series of ``metric`` (primary) against ``x_of(group)`` (None: left out);
    dense baselines without an x value become horizontal lines."""
    metric = primary_metric(groups)
    usable = [g for g in groups if metric in g.stats]
    if not usable:
        log.info("no %s in %s runs; not plotting %s", metric, title, path.name)
        return None
    fig, ax = new_figure()
    lines = series(usable)
    for color, (label, members) in zip(_colors(len(lines)), lines.items()):
        pts = sorted((x_of(g), *_mean_std(g, metric)) for g in members if x_of(g) is not None)
        if pts:
            xs, ys, es = zip(*pts)
            ax.errorbar(xs, ys, yerr=es, marker="o", ms=4, capsize=3, color=color, label=label)
        elif all(is_dense_baseline(g) for g in members):
            y, e = _mean_std(members[0], metric)
            ax.axhline(y, ls="--", color=color, label=f"{label} ({y:.4g})")
            ax.axhspan(y - e, y + e, color=color, alpha=0.12)
    ax.set_xlabel(x_label)
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax)
    return save_figure(fig, path)


def plot_accuracy_vs_sparsity(groups: Sequence[Group], path: Path, title: str) -> Optional[Path]:
    """Primary metric against target sparsity, one line per method/variant (mean ± std)."""
    def x_of(g: Group):
        return None if is_dense_baseline(g) else float(g.get(X_KEY))
    return plot_metric_vs(groups, path, x_of, "sparsity", title)


def flops_key(groups: Sequence[Group]) -> Optional[str]:
    """The summary key with training FLOPs relative to dense: ``train_flops_ratio`` when runs
    have it, else the first numeric key starting with ``train_flops``/``flops`` that is a ratio."""
    if any("train_flops_ratio" in g.stats for g in groups):
        return "train_flops_ratio"
    for g in groups:
        for r in g.runs:
            for k, v in r.summary.items():
                if k.startswith(("train_flops", "flops")) and "ratio" in k and isinstance(v, (int, float)):
                    return k
    return None


def _mean_of(g: Group, key: str) -> Optional[float]:
    vals = [r.summary.get(key) for r in g.runs]
    vals = [float(v) for v in vals if isinstance(v, (int, float))]
    return sum(vals) / len(vals) if vals else None


def plot_accuracy_vs_flops(groups: Sequence[Group], path: Path, title: str) -> Optional[Path]:
    """Primary metric against training FLOPs (× dense training); None if runs have no FLOPs."""
    key = flops_key(groups)
    if key is None:
        log.info("runs of %s have no training FLOPs in summary.json; skipping %s", title, path.name)
        return None
    return plot_metric_vs(groups, path, lambda g: _mean_of(g, key), "training FLOPs (× dense)", title)


# --- layer-wise densities ----------------------------------------------------------------------
def _layers_by_distribution(groups: Sequence[Group]) -> Dict[str, Dict[str, float]]:
    """distribution -> {layer: density} from the first finished sparse run of each distribution."""
    out: Dict[str, Dict[str, float]] = {}
    for g in groups:
        dist = str(g.get("sparsity.distribution"))
        if g.get("sparsity.method") == "dense" or dist in out:
            continue
        for r in g.runs:
            layers = r.summary.get("layers")
            if layers:
                out[dist] = {n: float(v["density"]) for n, v in layers.items()}
                break
    return out


def plot_layer_densities(groups: Sequence[Group], path: Path, title: str) -> Optional[Path]:
    """Bars of each layer's density, one bar per distribution (uniform vs ERK side by side)."""
    by_dist = _layers_by_distribution(groups)
    if not by_dist:
        log.info("no per-layer densities in %s; skipping %s", title, path.name)
        return None
    names = list(dict.fromkeys(n for layers in by_dist.values() for n in layers))
    fig, ax = new_figure(width=max(6.4, 0.55 * len(names) * len(by_dist)))
    width = 0.8 / len(by_dist)
    for i, (color, (dist, layers)) in enumerate(zip(_colors(len(by_dist)), sorted(by_dist.items()))):
        xs = [j + (i - (len(by_dist) - 1) / 2) * width for j in range(len(names))]
        ax.bar(xs, [layers.get(n, math.nan) for n in names], width, color=color, label=dist)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("density (fraction of weights active)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    _legend(ax)
    return save_figure(fig, path)


# --- dynamics from metrics.jsonl ---------------------------------------------------------------
def _first_runs(groups: Sequence[Group]) -> Dict[str, Any]:
    """label -> the lowest-seed run of each sparse series."""
    out = {}
    for label, members in series([g for g in groups if g.get("sparsity.method") != "dense"]).items():
        runs = sorted((r for g in members for r in g.runs), key=lambda r: (str(r.seed), str(r.run_dir)))
        if runs:
            out[label] = runs[0]
    return out


def _curve(records: Sequence[Dict[str, Any]], key: str) -> Tuple[List[int], List[float]]:
    pts = [(r["step"], float(r[key])) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_dynamics(groups: Sequence[Group], path: Path, title: str) -> Optional[Path]:
    """Drop fraction (left) and global density (right) against the training step."""
    runs = _first_runs(groups)
    curves = {lbl: (_curve(r.metrics, "drop_fraction"), _curve(r.metrics, "density")) for lbl, r in runs.items()}
    curves = {k: v for k, v in curves.items() if v[0][0] or v[1][0]}
    if not curves:
        log.info("no drop-fraction/density records in %s; skipping %s", title, path.name)
        return None
    fig, (ax_f, ax_d) = new_figure(width=11, ncols=2)
    for color, (label, (drop, dens)) in zip(_colors(len(curves)), curves.items()):
        ax_f.plot(*drop, color=color, label=label)
        ax_d.plot(*dens, color=color, label=label)
    for ax, ylabel in ((ax_f, "drop fraction"), (ax_d, "density")):
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_f.set_title(f"{title}: drop fraction", fontsize=10)
    ax_d.set_title(f"{title}: density", fontsize=10)
    _legend(ax_d)
    return save_figure(fig, path)


def churn_curve(records: Sequence[Dict[str, Any]]) -> Tuple[List[int], List[float]]:
    """(update step, churn) of each distinct drop/grow update seen in metrics.jsonl; masks set
    wholesale (records with a ``reason``: pruning, init_from) are not drop/grow updates."""
    seen: Dict[int, float] = {}
    for r in records:
        upd = r.get("last_update")
        if isinstance(upd, dict) and "churn" in upd and "step" in upd and "reason" not in upd:
            seen[int(upd["step"])] = float(upd["churn"])
    steps = sorted(seen)
    return steps, [seen[s] for s in steps]


def plot_churn(groups: Sequence[Group], path: Path, title: str) -> Optional[Path]:
    """Fraction of active connections that are new after each update, against the step."""
    curves = {lbl: churn_curve(r.metrics) for lbl, r in _first_runs(groups).items()}
    curves = {k: v for k, v in curves.items() if v[0]}
    if not curves:
        log.info("no mask updates recorded in %s; skipping %s", title, path.name)
        return None
    fig, ax = new_figure()
    for color, (label, (xs, ys)) in zip(_colors(len(curves)), curves.items()):
        ax.plot(xs, ys, marker=".", color=color, label=label)
    ax.set_xlabel("step of the update")
    ax.set_ylabel("churn (new / active connections)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax)
    return save_figure(fig, path)
