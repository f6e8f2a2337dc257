"""Reports from run directories only: tables (Markdown, CSV) with mean ± std over seeds, and plots.

``write_report(runs_dir, out_dir)`` writes ``results.md``, ``results.csv`` and PNG plots under
``out_dir/plots``; ``sparsetrain report RUNS_DIR --out DIR`` is the same from the command line.
Plots need the optional ``plots`` extra (matplotlib). :mod:`.record` turns run directories into
compact committable records (JSON Lines) that the same tables and plots read;
:mod:`.stats` decides "A beats B" claims over seeds (Welch's test, ``stats`` extra: scipy).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from ..errors import ConfigError
from . import plots
from .runs import RunRecord, load_runs, read_metrics
from .tables import Group, Stat, csv_table, group_runs, markdown_table, split_by

log = logging.getLogger(__name__)

__all__ = ["Report", "write_report", "figures_for", "load_runs", "read_metrics", "group_runs",
           "markdown_table", "csv_table", "Group", "Stat", "RunRecord"]


@dataclass
class Report:
    """What :func:`write_report` produced: groups, files and notes (skipped plots, unfinished runs)."""

    groups: List[Group]
    markdown: Path
    csv: Path
    figures: List[Tuple[str, Path]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def _slug(*parts) -> str:
    text = "-".join(str(p) for p in parts)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


# (file suffix, title suffix, plotting function); the FLOPs plot notes its absence
PER_MODEL: Sequence[Tuple[str, str, Callable]] = (
    ("accuracy_vs_sparsity", "accuracy vs sparsity", plots.plot_accuracy_vs_sparsity),
    ("accuracy_vs_flops", "accuracy vs training FLOPs", plots.plot_accuracy_vs_flops),
)
PER_SPARSITY: Sequence[Tuple[str, str, Callable]] = (
    ("layer_density", "layer-wise density", plots.plot_layer_densities),
    ("dynamics", "", plots.plot_dynamics),
    ("churn", "mask churn per update", plots.plot_churn),
)


def figures_for(groups: Sequence[Group], plot_dir: Path, notes: Optional[List[str]] = None,
                sparsities: Optional[Sequence[float]] = None) -> List[Tuple[str, Path]]:
    """Every plot for ``groups``: per dataset/model, and per dataset/model/sparsity (only the
    ``sparsities`` given, default all). Returns (title, path) pairs; plots without data are
    skipped (the missing FLOPs plot with a note in ``notes``)."""
    notes = notes if notes is not None else []
    out: List[Tuple[str, Path]] = []
    for (data, model), gs in split_by(groups, plots.FIGURE_KEYS):
        metric = plots.primary_metric(gs).split("_")[-1]  # accuracy, or perplexity for LMs
        for suffix, what, fn in PER_MODEL:
            title = f"{data} / {model}: {what.replace('accuracy', metric)}"
            path = fn(gs, plot_dir / f"{_slug(data, model, suffix)}.png", title)
            if path is None and suffix == "accuracy_vs_flops":
                notes.append(f"{data} / {model}: no training FLOPs in summary.json; FLOPs plot skipped.")
            out += [(title, path)] if path else []
        sparse = [g for g in gs if g.get("sparsity.method") != "dense"]
        for (sparsity,), sg in split_by(sparse, (plots.X_KEY,)):
            if sparsities is not None and not any(abs(sparsity - s) < 1e-9 for s in sparsities):
                continue
            for suffix, what, fn in PER_SPARSITY:
                title = f"{data} / {model} @ {sparsity:g}" + (f": {what}" if what else "")
                path = fn(sg, plot_dir / f"{_slug(data, model, f's{sparsity:g}', suffix)}.png", title)
                out += [(title, path)] if path else []
    return out


def _names(runs, first: int = 5) -> str:
    """The first run directories' names, ``...`` if there are more."""
    return ", ".join(r.run_dir.name for r in runs[:first]) + (" ..." if len(runs) > first else "")


def _markdown(groups: Sequence[Group], figures, notes: Sequence[str], base: Path, runs_dir: Path) -> str:
    lines = [f"# Results from `{runs_dir}`", "",
             "Mean ± sample std over seeds (n = number of seeds); accuracies in percent.", ""]
    for (data, model), gs in split_by(groups, plots.FIGURE_KEYS):
        lines += [f"## {data} / {model}", "", markdown_table(gs)]
        for title, path in figures:
            if title.startswith(f"{data} / {model}"):
                lines += [f"![{title}]({path.relative_to(base).as_posix()})", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def write_report(runs_dir: str | Path, out_dir: str | Path | None = None, plot: bool = True) -> Report:
    """Read every run under ``runs_dir``; write results.md, results.csv and plots/*.png to
    ``out_dir`` (default ``runs_dir/report``). Raises ConfigError if no run has finished."""
    runs_dir = Path(runs_dir)
    out = Path(out_dir) if out_dir is not None else runs_dir / "report"
    runs = load_runs(runs_dir)
    groups = group_runs(runs)
    if not groups:
        raise ConfigError(f"no finished runs (with summary.json) under '{runs_dir}'; train some first")
    notes = []
    corrupt = [r for r in runs if not r.finished and (r.run_dir / "summary.json").exists()]
    unfinished = [r for r in runs if not r.finished and r not in corrupt]
    if corrupt:
        notes.append(f"{len(corrupt)} run(s) with a corrupt summary.json left out (rerun the same train or sweep "
                     "command to recompute it): " + _names(corrupt))
    if unfinished:
        notes.append(f"{len(unfinished)} unfinished run(s) left out: " + _names(unfinished))
    figures = figures_for(groups, out / "plots", notes) if plot else []
    out.mkdir(parents=True, exist_ok=True)
    md, csv_path = out / "results.md", out / "results.csv"
    md.write_text(_markdown(groups, figures, notes, out, runs_dir))
    csv_path.write_text(csv_table(groups))
    return Report(groups, md, csv_path, figures, notes)
