"""The run store: one directory per run configuration, keyed by its hash; runs are idempotent.

Run directory (``out_dir/<data>-<model>-<method>-s<sparsity>-<hash>``): config.json,
checkpoint.pt, metrics.jsonl, summary.json (and tb/ with TensorBoard; ticket.pt, rounds.jsonl,
masks/ for lottery-ticket methods). A run with summary.json is finished and is not run again; one
with checkpoint.pt resumes from it (open_lth keeps runs the same way). The training itself is
:class:`sparsetrain.train.trainer.Trainer`'s.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Union

from ..config import RunConfig, from_dict, run_hash, to_dict, validate
from ..errors import CheckpointError
from ..train.checkpoint import atomic_write_text
from ..train.threads import default_threads, threads_for
from ..train.trainer import Trainer

__all__ = ["run_dir_for", "load_run_config", "prepare_run_dir", "finished_summary", "run_trainer", "train_run",
           "default_threads", "threads_for"]

log = logging.getLogger(__name__)


def run_dir_for(cfg: RunConfig) -> Path:
    """``out_dir/<data>-<model>-<method>-s<sparsity>-<hash>``: readable, and unique per config."""
    s = cfg.sparsity
    return Path(cfg.out_dir) / f"{cfg.data.name}-{cfg.model.name}-{s.method}-s{s.sparsity:g}-{run_hash(cfg)}"


def load_run_config(run_dir: Union[str, Path]) -> RunConfig:
    """The config saved in a run directory (for --resume)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"'{run_dir}' is not a run directory (no config.json); pass the directory "
                              "that `sparsetrain train` created")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"'{path}' is corrupt; delete the run directory to start over") from None
    data.pop("_hash", None)
    cfg = from_dict(RunConfig, data)
    validate(cfg)
    return cfg


def prepare_run_dir(cfg: RunConfig, run_dir: Path) -> None:
    """Create ``run_dir`` with config.json, or check that the one there is ``cfg``'s (same hash)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / "config.json"
    want = {**to_dict(cfg), "_hash": run_hash(cfg)}
    if cfg_path.exists():
        have = json.loads(cfg_path.read_text())
        if have.get("_hash") != want["_hash"]:
            raise CheckpointError(f"run directory '{run_dir}' holds a different configuration; "
                                  "choose another out_dir or delete it")
    else:
        atomic_write_text(cfg_path, json.dumps(want, indent=2))


def finished_summary(run_dir: Union[str, Path]) -> Optional[Dict[str, Any]]:
    """The summary of a finished run (its summary.json), None if it has not finished."""
    done = Path(run_dir) / "summary.json"
    return json.loads(done.read_text()) if done.exists() else None


def run_trainer(trainer: Trainer) -> Dict[str, Any]:
    """Run a built Trainer in its run directory: config.json first, summary.json at the end."""
    if trainer.is_main:
        prepare_run_dir(trainer.cfg, trainer.run_dir)
    summary = trainer.run()
    if trainer.is_main:
        atomic_write_text(trainer.run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def train_run(cfg: RunConfig, run_dir: Optional[Union[str, Path]] = None) -> Dict[str, Any]:
    """Build and run (or finish, or skip if finished) the run for ``cfg`` in ``run_dir``
    (default :func:`run_dir_for`)."""
    run_dir = Path(run_dir or run_dir_for(cfg))
    done = finished_summary(run_dir)
    if done is not None:
        log.info("%s is finished; not running it again", run_dir)
        return done
    return run_trainer(Trainer(cfg, run_dir))
