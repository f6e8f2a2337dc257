"""Reading run directories (config.json, summary.json, metrics.jsonl) — the only input of reports.

A run directory is any folder holding ``config.json`` (as written by the runner). Finished runs
also hold ``summary.json``; runs without it are reported as unfinished and left out of tables.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..config import _UNHASHED, flat_items
from ..errors import ConfigError

log = logging.getLogger(__name__)

#: config keys that never separate groups: the seed (averaged over) and keys that do not change
#: what is computed (paths, device, logging)
NON_GROUP_KEYS = frozenset({"seed", "_hash"} | set(_UNHASHED))


@dataclass
class RunRecord:
    """One run directory: its flat config (dotted keys), its summary (None if unfinished)."""

    run_dir: Path
    config: Dict[str, Any]
    summary: Optional[Dict[str, Any]] = None
    _metrics: Optional[List[Dict[str, Any]]] = field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    def group_key(self) -> tuple:
        """Hashable identity of the run's group: every config key but the seed (and paths)."""
        return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in self.config.items()
                            if k not in NON_GROUP_KEYS))

    @property
    def metrics(self) -> List[Dict[str, Any]]:
        """Records of metrics.jsonl (read once, on first use)."""
        if self._metrics is None:
            self._metrics = read_metrics(self.run_dir)
        return self._metrics


def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8
        log.warning("skipping unreadable %s (%s)", path, e)
        return None
    return data if isinstance(data, dict) else None


def read_metrics(run_dir: Path) -> List[Dict[str, Any]]:
    """metrics.jsonl as a list of dicts (empty if absent); a torn last line is ignored."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("ignoring a malformed line in %s", path)
    return out


def flat_config(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Dotted keys of a saved config; ``options`` tables are opened one level too
    (``sparsity.options.delta_t``), so a table shows only the option that varies."""
    out: Dict[str, Any] = {}
    for key, value in flat_items(cfg):
        if key.endswith("options") and isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def read_run(run_dir: Path) -> Optional[RunRecord]:
    """The record of ``run_dir``, or None if its config.json is unreadable."""
    cfg = _read_json(run_dir / "config.json")
    if cfg is None:
        return None
    summary_path = run_dir / "summary.json"
    summary = _read_json(summary_path) if summary_path.exists() else None
    return RunRecord(run_dir, flat_config(cfg), summary)


def load_runs(root: str | Path) -> List[RunRecord]:
    """Every run directory under ``root`` (searched recursively), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"runs directory '{root}' does not exist; pass the out_dir your runs were written to")
    records = [read_run(p.parent) for p in sorted(root.rglob("config.json"))]
    records = [r for r in records if r is not None]
    log.info("%s: %d run directories, %d finished", root, len(records), sum(r.finished for r in records))
    return records
