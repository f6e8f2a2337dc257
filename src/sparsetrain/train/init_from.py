"""Start a run from another run's final weights (config key ``train.init_from``).

This is how the RigL paper's §5 experiment is set up: "RigL started from the Static solution"
(Evci et al., "Rigging the Lottery: Making All Tickets Winners", ICML 2020, §5, Fig. 6). The
source run's ``checkpoint.pt`` gives the model ``state_dict`` and, when the source trained with
masks, its engine masks. What is copied:

* weights: always (the architectures must match);
* masks: when both runs are sparse, the source's masks replace the new engine's initial masks
  (layer names and shapes must match); when only the new run is sparse, its own initial masks
  are applied to the loaded weights; when the new run is dense, the weights are used as is.

Optimizer state, step and schedules start fresh: the new run is a new training run.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, first_line
from .checkpoint import load_checkpoint

log = logging.getLogger(__name__)


def _source_checkpoint(run_dir: str | Path, device) -> dict:
    path = Path(run_dir)
    if not path.is_dir():
        raise CheckpointError(f"train.init_from='{run_dir}' is not a directory; give a run directory "
                              "that has checkpoint.pt (train that run first)")
    ck = load_checkpoint(path / "checkpoint.pt", map_location=device)
    if not (path / "summary.json").exists():
        log.warning("initialising from %s, which has not finished (no summary.json)", path)
    return ck


def _copy_masks(engine, masks: dict, source: str) -> None:
    """Replace the engine's masks by ``masks`` (same layers and shapes) and apply them."""
    if set(masks) != {t.name for t in engine.targets}:
        raise CheckpointError(f"train.init_from='{source}' has masks for {sorted(masks)} but this run "
                              f"sparsifies {sorted(t.name for t in engine.targets)}; use the same model "
                              "and the same dense_first/dense_last/include/exclude settings")
    dense = {n: m.to_dense() if m.layout != torch.strided else m for n, m in masks.items()}
    try:
        engine.set_masks(dense, reason="init_from")
    except ConfigError as e:
        raise CheckpointError(f"train.init_from='{source}': {e}") from None


def init_from_run(model: nn.Module, engine, run_dir: str | Path, device: Optional[torch.device] = None) -> None:
    """Load ``run_dir``'s final weights into ``model`` and its masks into ``engine`` (see the
    module docstring for the rules). Raises CheckpointError if they do not fit."""
    ck = _source_checkpoint(run_dir, device or "cpu")
    try:
        model.load_state_dict(ck["model"])
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"train.init_from='{run_dir}' does not fit this model: "
                              f"{first_line(e)}; use the same model and width") from None
    if engine is None:
        return
    source_engine = ck.get("engine")
    if source_engine is not None:
        _copy_masks(engine, source_engine["masks"], str(run_dir))
    else:
        engine.apply_masks()  # a dense source: this run's own initial masks prune its weights
    log.info("initialised from %s (weights%s)", run_dir, " and masks" if source_engine is not None else "")
