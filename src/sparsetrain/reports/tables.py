"""Groups of runs that differ only in their seed, their metrics' mean ± std, Markdown and CSV.

The std is the sample standard deviation (n − 1 in the denominator) over seeds; with one seed it
is undefined (NaN in memory, empty in CSV, "–" in Markdown).
"""
from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .runs import NON_GROUP_KEYS, RunRecord

#: metric name -> how to read it from summary.json (None if the run does not have it)
METRICS: Dict[str, Callable[[Mapping[str, Any]], Optional[float]]] = {
    "test_accuracy": lambda s: s.get("final", {}).get("test", {}).get("accuracy"),
    "test_perplexity": lambda s: s.get("final", {}).get("test", {}).get("perplexity"),
    "test_loss": lambda s: s.get("final", {}).get("test", {}).get("loss"),
    "val_accuracy": lambda s: s.get("final", {}).get("val", {}).get("accuracy"),
    "best_test_accuracy": lambda s: s.get("best", {}).get("test_accuracy"),
    "achieved_sparsity": lambda s: s.get("achieved_sparsity"),
    "train_flops_ratio": lambda s: s.get("train_flops_ratio"),
    "inference_flops_ratio": lambda s: s.get("inference_flops_ratio"),
    "wall_time_s": lambda s: s.get("wall_time_s"),
}

#: config keys always shown as table columns (others only when they vary)
CORE_KEYS = ("data.name", "model.name", "sparsity.method", "sparsity.sparsity")

#: short column titles for common keys; others use the key itself
SHORT = {"data.name": "data", "model.name": "model", "sparsity.method": "method",
         "sparsity.sparsity": "sparsity", "sparsity.distribution": "distribution",
         "train.multiplier": "multiplier", "model.width": "width", "sparsity.options": "options"}

PERCENT = ("accuracy",)  # metrics shown as percentages in Markdown


@dataclass
class Stat:
    """Mean, sample std (NaN for one value) and count of one metric over a group's seeds."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stat":
        vals = [float(v) for v in values]
        std = statistics.stdev(vals) if len(vals) > 1 else math.nan
        return cls(statistics.fmean(vals), std, len(vals))


@dataclass
class Group:
    """Finished runs sharing every config key except the seed."""

    config: Dict[str, Any]
    runs: List[RunRecord] = field(default_factory=list)
    stats: Dict[str, Stat] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> List[Any]:
        return sorted(r.seed for r in self.runs)

    def get(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)


def _group_config(run: RunRecord) -> Dict[str, Any]:
    return {k: v for k, v in run.config.items() if k not in NON_GROUP_KEYS}


def _stats(runs: Sequence[RunRecord]) -> Dict[str, Stat]:
    out = {}
    for name, read in METRICS.items():
        values = [read(r.summary) for r in runs]
        values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if values:
            out[name] = Stat.of(values)
    return out


def group_runs(runs: Iterable[RunRecord]) -> List[Group]:
    """Finished runs grouped by all config keys except the seed, with metric statistics,
    sorted by dataset, model, method, distribution, sparsity."""
    by_key: Dict[tuple, Group] = {}
    for run in runs:
        if run.finished:
            by_key.setdefault(run.group_key(), Group(_group_config(run))).runs.append(run)
    groups = list(by_key.values())
    for g in groups:
        g.stats = _stats(g.runs)
    return sorted(groups, key=_sort_key)


def _sort_key(g: Group) -> tuple:
    fixed = tuple(str(g.get(k)) for k in ("data.name", "model.name", "sparsity.method", "sparsity.distribution"))
    return fixed + (float(g.get("sparsity.sparsity", 0.0)), json.dumps(g.config, sort_keys=True, default=str))


def _varies(groups: Sequence[Group], key: str) -> bool:
    values = [g.get(key) for g in groups]
    if ".options." in key:  # a method without this option is not a different value of it
        values = [v for v in values if v is not None]
    return len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1


def varying_keys(groups: Sequence[Group], exclude: Iterable[str] = ()) -> List[str]:
    """Config keys whose value differs between ``groups`` (in first-seen order); an option
    that only some groups' methods have counts as varying only if its set values differ."""
    skip = set(exclude)
    keys: List[str] = []
    for g in groups:
        keys += [k for k in g.config if k not in keys and k not in skip]
    return [k for k in keys if _varies(groups, k)]


def table_keys(groups: Sequence[Group]) -> List[str]:
    """Config columns of a table: the core keys, then every other key that varies."""
    return list(CORE_KEYS) + varying_keys(groups, exclude=CORE_KEYS)


def present_metrics(groups: Sequence[Group]) -> List[str]:
    """Metrics that at least one group has, in :data:`METRICS` order."""
    return [m for m in METRICS if any(m in g.stats for g in groups)]


def show_value(value: Any) -> str:
    """A config value as a table cell (tables as k=v lists)."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={show_value(v)}" for k, v in value.items()) or "–"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show_value(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return "–" if value is None else str(value)


def show_stat(metric: str, stat: Optional[Stat]) -> str:
    """``mean ± std`` (accuracies in percent, 2 decimals; others 4 significant digits)."""
    if stat is None:
        return ""
    scale, fmt = (100.0, "{:.2f}") if any(p in metric for p in PERCENT) else (1.0, "{:.4g}")
    std = "–" if math.isnan(stat.std) else fmt.format(stat.std * scale)
    return f"{fmt.format(stat.mean * scale)} ± {std}"


def _title(key: str) -> str:
    if key in SHORT:
        return SHORT[key]
    return key.rsplit(".", 1)[-1] if ".options." in key else key


def _metric_title(metric: str) -> str:
    return f"{metric} (%)" if any(p in metric for p in PERCENT) else metric


def markdown_table(groups: Sequence[Group], metrics: Optional[Sequence[str]] = None,
                   keys: Optional[Sequence[str]] = None) -> str:
    """A Markdown table: config columns, n (seeds), then ``mean ± std`` per metric."""
    keys = list(keys) if keys is not None else table_keys(groups)
    metrics = list(metrics) if metrics is not None else present_metrics(groups)
    head = [_title(k) for k in keys] + ["n"] + [_metric_title(m) for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for g in groups:
        cells = [show_value(g.get(k)) for k in keys] + [str(g.n)]
        cells += [show_stat(m, g.stats.get(m)) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(groups: Sequence[Group], metrics: Optional[Sequence[str]] = None,
              keys: Optional[Sequence[str]] = None) -> str:
    """CSV with one row per group: config columns (dotted keys), n, seeds, ``<metric>_mean``,
    ``<metric>_std`` (raw values; empty when undefined)."""
    keys = list(keys) if keys is not None else table_keys(groups)
    metrics = list(metrics) if metrics is not None else present_metrics(groups)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(keys + ["n", "seeds"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")])
    for g in groups:
        row = [json.dumps(v) if isinstance(v, (dict, list)) else v for v in (g.get(k) for k in keys)]
        row += [g.n, " ".join(str(s) for s in g.seeds)]
        for m in metrics:
            st = g.stats.get(m)
            row += ["", ""] if st is None else [repr(st.mean), "" if math.isnan(st.std) else repr(st.std)]
        w.writerow(row)
    return buf.getvalue()


def split_by(groups: Sequence[Group], keys: Sequence[str]) -> List[Tuple[tuple, List[Group]]]:
    """Groups partitioned by the values of ``keys`` (e.g. dataset and model), in order."""
    parts: Dict[tuple, List[Group]] = {}
    for g in groups:
        parts.setdefault(tuple(g.get(k) for k in keys), []).append(g)
    return list(parts.items())
