"""Compact, committable records of finished runs: one JSON object per line (JSON Lines).

A record keeps what a report needs from a run directory, so reports can be rebuilt without the
run directories (which hold checkpoints and are not committed):

* ``run``: the run directory's name (``<data>-<model>-<method>-s<sparsity>-<hash>``);
* ``config``: config.json without the keys that only say where it ran (paths, device, logging);
* ``device``: where it trained (``train.device`` as resolved: cpu, cuda) and ``machine``, a
  free-text description given when the record was made;
* ``summary``: summary.json (final metrics, achieved densities per layer, FLOPs, wall time,
  time-to-ticket, method details) without its absolute ``run_dir``, plus ``sanity``: the
  sanity.json of the run (checks and their accuracies) where there is one, with the wall time
  of each check's retraining (``wall_time_s``);
* ``metrics``: the rows of metrics.jsonl reduced to the keys the dynamics plots read, kept
  only for the lowest seed of each group (the plots draw that run).

Lines are sorted by run name and written with sorted keys, so the same runs give the same bytes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from ..config import _UNHASHED, flat_items
from .runs import RunRecord, _read_json, flat_config, load_runs

#: metrics.jsonl keys kept for the plots (drop fraction, density, churn, accuracy curves)
METRIC_KEYS = ("step", "phase", "density", "drop_fraction", "last_update", "test_accuracy",
               "val_accuracy", "test_perplexity")
#: config keys dropped from records: where a run ran, not what it computed
PLACE_KEYS = frozenset(_UNHASHED)


def _config(saved: Dict[str, Any]) -> Dict[str, Any]:
    """config.json (nested) with the place keys removed, nested again."""
    out: Dict[str, Any] = {}
    for key, value in flat_items({k: v for k, v in saved.items() if k != "_hash"}):
        if key in PLACE_KEYS:
            continue
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _metrics(rows: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
    keep = []
    for r in rows:
        row = {k: r[k] for k in METRIC_KEYS if k in r}
        if len(row) > 1:  # more than the step
            keep.append(row)
    return keep


def make_record(run: RunRecord, machine: str, keep_metrics: bool) -> Dict[str, Any]:
    """The record of one finished run (see the module docstring)."""
    saved = _read_json(run.run_dir / "config.json") or {}
    summary = {k: v for k, v in (run.summary or {}).items() if k != "run_dir"}
    sanity = _read_json(run.run_dir / "sanity.json") if (run.run_dir / "sanity.json").is_file() else None
    if sanity is not None:
        summary["sanity"] = {k: v for k, v in sanity.items() if k != "run_dir"}
        walls = {p.parent.name: (_read_json(p) or {}).get("wall_time_s", 0.0)
                 for p in sorted(run.run_dir.glob("sanity/*/summary.json"))}
        summary["sanity"]["wall_time_s"] = walls
    rec = {"run": run.run_dir.name, "config": _config(saved),
           "device": saved.get("train", {}).get("device", "auto"), "machine": machine, "summary": summary}
    if keep_metrics:
        rec["metrics"] = _metrics(run.metrics)
    return rec


def extract(root: Path, machine: str) -> List[Dict[str, Any]]:
    """Records of every finished run under ``root`` (run directories inside sanity/ folders are
    part of their parent's record, not runs of their own)."""
    runs = [r for r in load_runs(root) if r.finished and "sanity" not in r.run_dir.relative_to(root).parts]
    lowest: Dict[tuple, Any] = {}
    for r in runs:
        key = r.group_key()
        lowest[key] = min(lowest.get(key, r.seed), r.seed, key=str)
    return [make_record(r, machine, keep_metrics=r.seed == lowest[r.group_key()]) for r in runs]


def write_records(records: Iterable[Dict[str, Any]], path: Path, merge: bool = True) -> int:
    """Write ``records`` to ``path`` (JSON Lines, sorted by run name); with ``merge`` the records
    already there stay unless a new one has the same run name. Returns the number of lines."""
    path = Path(path)
    by_name = {r["run"]: r for r in (read_raw(path) if merge and path.is_file() else [])}
    by_name.update({r["run"]: r for r in records})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(by_name[k], sort_keys=True, separators=(",", ":")) + "\n"
                            for k in sorted(by_name)))
    return len(by_name)


def read_raw(path: Path) -> List[Dict[str, Any]]:
    """The records in ``path`` as dicts."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def to_run(rec: Dict[str, Any]) -> RunRecord:
    """A :class:`RunRecord` (as :func:`load_runs` gives) for a record, so the tables and plots
    of :mod:`sparsetrain.reports` work on it; ``run_dir`` is the bare run name."""
    config = flat_config(rec["config"])
    return RunRecord(Path(rec["run"]), config, rec["summary"], _metrics=list(rec.get("metrics", [])))


def read_records(path: Path, where: Optional[Dict[str, Any]] = None) -> List[RunRecord]:
    """The runs recorded in ``path``; ``where`` keeps those whose flat config matches it."""
    runs = [to_run(r) for r in read_raw(path)]
    if where:
        runs = [r for r in runs if all(r.config.get(k) == v for k, v in where.items())]
    return runs
