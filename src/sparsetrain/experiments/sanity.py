"""Sanity checks of a found mask: does the ticket depend on which weights it keeps?

Frankle, Dziugaite, Roy & Carbin, "Pruning Neural Networks at Initialization: Why Are We Missing
the Mark?", ICLR 2021, as used by Gem-Miner (Sreenivasan et al., NeurIPS 2022, §3.2 / Table 2).
For a finished run, the ticket (mask + the weights its final training started from: ``ticket.pt``
when the method wrote one, else the final mask and the run's seeded init) is varied and each
variant is trained with the run's config as a static sparse run. As in Frankle et al., every
weight of a variant's mask starts from the original, UNMASKED initialisation (the ticket's
``init``), so weights a shuffled or inverted mask enables start at their init values, not at the
zeros the ticket's masked weights hold:

- ``shuffle``: the mask permuted at random within each layer (same per-layer counts), from the init;
- ``reinit``: the weights re-drawn from the model's init with another seed (same mask);
- ``invert``: per layer, keep the LOWEST scores instead of the highest (same counts), from the
  init, for methods with scores (SNIP, GraSP, SynFlow, edge-popup, Gem-Miner);
- ``original``: the ticket itself, retrained with the same static recipe (a control).

A good ticket "passes" when the variants lose accuracy. Results: ``sanity.json`` in the run
directory and the variants' own runs under ``RUN_DIR/sanity/<check>``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from ..errors import CheckpointError, ConfigError
from ..sparsity.topk import topk_mask
from ..train.checkpoint import atomic_write_text, load_checkpoint

log = logging.getLogger(__name__)

CHECKS = ("shuffle", "reinit", "invert", "original")
DEFAULT_CHECKS = ("shuffle", "reinit", "invert")
Masks = Dict[str, torch.Tensor]


def load_ticket(run_dir: Path) -> dict:
    """{"masks", "weights" (masked; or None: the run's seeded init), "init" (unmasked; or None),
    "scores" (or None)} of a finished run."""
    run_dir = Path(run_dir)
    if (run_dir / "ticket.pt").is_file():
        t = load_checkpoint_file(run_dir / "ticket.pt")
        if t.get("init") is None:
            log.warning("'%s' is a ticket from before the unmasked init was saved: weights a shuffled or "
                        "inverted mask enables start at 0; rerun the method for Frankle et al.'s protocol", run_dir)
        return {"masks": t["masks"], "weights": t.get("weights"), "init": t.get("init"), "scores": t.get("scores")}
    ck = load_checkpoint(run_dir / "checkpoint.pt")
    if not ck.get("engine"):
        raise ConfigError(f"run '{run_dir}' trained without masks (dense/small_dense); sanity checks need a mask")
    return {"masks": {n: m.to_dense() if m.layout != torch.strided else m for n, m in ck["engine"]["masks"].items()},
            "weights": None, "init": None, "scores": None}


def load_checkpoint_file(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"'{path}' is unreadable ({str(e).splitlines()[0][:100]}); rerun the method") from None


def shuffled(masks: Masks, seed: int) -> Masks:
    """Each layer's mask permuted uniformly at random (its count kept)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n, m in masks.items():
        flat = m.reshape(-1).cpu()
        out[n] = flat[torch.randperm(flat.numel(), generator=g)].view_as(m)
    return out


def inverted(masks: Masks, scores: Masks) -> Masks:
    """Per layer, the same number of weights with the lowest scores."""
    return {n: topk_mask(-scores[n].float(), int(m.sum())) for n, m in masks.items()}


def reinitialised(cfg, info, seed: int) -> Dict[str, torch.Tensor]:
    """A fresh init of the run's model drawn with ``seed`` (its own init scheme)."""
    from ..models import build_model

    m = cfg.model
    torch.manual_seed(seed)
    return build_model(m.name, info, width=m.width, **m.options).state_dict()


def unmasked_init(ticket: dict, cfg, info) -> dict:
    """The weights a varied mask starts from: the ticket's unmasked init; for a run without a
    ticket file, its seeded init rebuilt (the Trainer seeds with ``cfg.seed`` before building the
    model); for an old ticket without ``init``, its masked weights."""
    if ticket.get("init") is not None:
        return ticket["init"]
    if ticket["weights"] is None:
        return reinitialised(cfg, info, cfg.seed)
    return ticket["weights"]


def variant(check: str, ticket: dict, cfg, info) -> Tuple[Masks, Optional[dict]]:
    """(masks, weights or None) of one check; ConfigError if it does not apply."""
    masks, weights = ticket["masks"], ticket["weights"]
    if check == "shuffle":
        return shuffled(masks, cfg.seed + 1), unmasked_init(ticket, cfg, info)
    if check == "reinit":
        return masks, reinitialised(cfg, info, cfg.seed + 1)
    if check == "invert":
        if ticket["scores"] is None:
            raise ConfigError("this method keeps no scores (invert applies to SNIP, GraSP, SynFlow, "
                              "edge_popup and gem_miner)")
        return inverted(masks, ticket["scores"]), unmasked_init(ticket, cfg, info)
    return masks, weights


def retrain(cfg, run_dir: Path, masks: Masks, weights: Optional[dict]) -> dict:
    """Train ``masks`` (from ``weights``, or the seeded init) as a static sparse run in ``run_dir``."""
    from ..train.trainer import Trainer
    from .run_store import finished_summary, run_trainer

    done = finished_summary(run_dir)
    if done is not None:
        return done
    static = dataclasses.replace(cfg, sparsity=dataclasses.replace(cfg.sparsity, method="static", options={}),
                                 train=dataclasses.replace(cfg.train, init_from=None))
    tr = Trainer(static, run_dir)
    if not (run_dir / "checkpoint.pt").exists():  # a fresh variant: install it (a resumed one is in its checkpoint)
        if weights is not None:
            tr.model.load_state_dict(weights)
        tr.engine.set_masks(masks, reason="sanity")
    return run_trainer(tr)


def _accuracy(summary: dict) -> Optional[float]:
    return summary.get("final", {}).get("test", {}).get("accuracy")


def sanity(run_dir: Path, checks: Sequence[str] = DEFAULT_CHECKS, overrides: Sequence[str] = ()) -> dict:
    """Run the checks on a finished run; returns (and writes to ``sanity.json``) every accuracy."""
    from ..config import load_config, to_dict
    from ..data import dataset_info
    from .run_store import load_run_config

    run_dir = Path(run_dir)
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown:
        raise ConfigError(f"unknown check(s) {unknown}; choose from {', '.join(CHECKS)}")
    if not (run_dir / "summary.json").is_file():
        raise CheckpointError(f"'{run_dir}' has no summary.json; finish the run first (sparsetrain train --resume)")
    cfg = load_config(overrides=tuple(overrides), base=to_dict(load_run_config(run_dir)))
    summary = json.loads((run_dir / "summary.json").read_text())
    ticket = load_ticket(run_dir)
    info = dataset_info(cfg.data.name, **cfg.data.options)
    method_report = summary.get(cfg.sparsity.method) or {}
    out: Dict[str, Any] = {"run_dir": str(run_dir), "method": cfg.sparsity.method,
                           "original": {"test_accuracy": _accuracy(summary),
                                        "ticket_test_accuracy": (method_report.get("ticket") or {}).get("test_accuracy")
                                        if isinstance(method_report, dict) else None},
                           "checks": {}}
    for check in checks:
        try:
            masks, weights = variant(check, ticket, cfg, info)
        except ConfigError as e:
            out["checks"][check] = {"skipped": str(e)}
            continue
        res = retrain(cfg, run_dir / "sanity" / check, masks, weights)
        out["checks"][check] = {"test_accuracy": _accuracy(res), "density": res.get("achieved_density")}
    atomic_write_text(run_dir / "sanity.json", json.dumps(out, indent=2))
    return out


def format_table(result: dict) -> str:
    """Markdown table: each variant's test accuracy next to the original's."""
    orig = result["original"]["test_accuracy"]
    rows = ["| variant | test accuracy | Δ vs original |", "|---|---|---|",
            f"| original ({result['method']}) | {orig:.4f} | |" if orig is not None else "| original | n/a | |"]
    if result["original"].get("ticket_test_accuracy") is not None:
        rows.append(f"| ticket before weight training | {result['original']['ticket_test_accuracy']:.4f} | |")
    for name, r in result["checks"].items():
        if "skipped" in r:
            rows.append(f"| {name} | skipped: {r['skipped']} | |")
        else:
            delta = "" if orig is None else f"{r['test_accuracy'] - orig:+.4f}"
            rows.append(f"| {name} | {r['test_accuracy']:.4f} | {delta} |")
    return "\n".join(rows)

