"""``sparsetrain flops``: per-layer inference FLOPs and a method's training FLOPs of a config,
without data or training (:mod:`sparsetrain.experiments.flops_estimate`).

It reads the same ``RunConfig`` as ``train`` (``--config``, ``--set``); the flags below are
shortcuts for config keys, generated from :data:`SHORTCUTS`.
"""
from __future__ import annotations

import argparse
import json

from ..config import RunConfig, load_config
from ..experiments.flops_estimate import FlopsEstimate, estimate_flops
from .common import Shortcut, add_config_flags, add_shortcuts, config_overrides, fail

NAME = "flops"
#: flag -> config key; ``--model`` and ``--dataset`` are required unless ``--config`` is given
SHORTCUTS = [
    Shortcut("--model", "model.name", "registered model name (see `sparsetrain list`), or torchvision:NAME, timm:NAME, package.module:factory"),
    Shortcut("--dataset", "data.name", "dataset whose input shape and classes the model gets"),
    Shortcut("--sparsity", "sparsity.sparsity", "global target sparsity in [0, 1)"),
    Shortcut("--distribution", "sparsity.distribution",
             "layer distribution: uniform, er, erk (default: the method's paper's, see `sparsetrain list`)"),
    Shortcut("--method", "sparsity.method", "training method whose training FLOPs to report"),
    Shortcut("--width", "model.width", "model width multiplier"),
    Shortcut("--multiplier", "train.multiplier", "extended training factor M"),
    Shortcut("--delta-t", "sparsity.options.delta_t", "steps between mask updates, RigL's ΔT (default 100)"),
    Shortcut("--erk-power", "sparsity.erk_power", "ERK exponent"),
    Shortcut("--dense-first", "sparsity.dense_first",
             "keep the first sparsifiable layer dense (default: on for uniform, off otherwise)"),
    Shortcut("--dense-last", "sparsity.dense_last", "keep the last sparsifiable layer dense"),
]
REQUIRED = ("--model", "--dataset")


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``flops``: config flags, the shortcuts and ``--json``."""
    p = sub.add_parser(NAME, help="per-layer inference FLOPs and training FLOPs of a method (no data needed)")
    add_config_flags(p)
    add_shortcuts(p, SHORTCUTS)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p


def run(args) -> int:
    """Print the per-layer table and totals (or ``--json``)."""
    overrides = config_overrides(args, SHORTCUTS)
    missing = [s.flag for s in SHORTCUTS if s.flag in REQUIRED and not args.config
               and not any(o.split("=", 1)[0].strip() == s.key for o in overrides)]
    if missing:
        return fail(f"the following arguments are required: {', '.join(missing)} (or give --config)")
    cfg = load_config(args.config, overrides)
    est = estimate_flops(cfg)
    print(json.dumps(as_json(cfg, est), indent=2) if args.json else as_text(cfg, est))
    return 0


def as_json(cfg: RunConfig, est: FlopsEstimate) -> dict:
    """The config's identifying values, the summary and the per-layer report."""
    s = cfg.sparsity
    return {"model": cfg.model.name, "dataset": cfg.data.name, "sparsity": s.sparsity,
            "distribution": s.distribution, "method": s.method, "width": cfg.model.width,
            "delta_t": getattr(est.method.options, "delta_t", None), **est.summary, **est.report.to_dict()}


def as_text(cfg: RunConfig, est: FlopsEstimate) -> str:
    """The per-layer table, a line naming the setting and the totals."""
    summary, s = est.summary, cfg.sparsity
    shape = "x".join(map(str, est.report.input_shape))
    delta_t = getattr(est.method.options, "delta_t", None)
    lines = [est.report.table(), "",
             f"{cfg.model.name} on {cfg.data.name} (input {shape}), sparsity {s.sparsity:g}, "
             f"{s.distribution}, method {s.method}" + (f" (ΔT {delta_t})" if s.method == "rigl" else ""),
             f"inference FLOPs: dense {summary['inference_flops_dense']:.4e}, sparse {summary['inference_flops']:.4e}"
             f" = {summary['inference_flops_ratio']:.4f}x dense (the total row's density column is this "
             "FLOPs ratio, not a weight density)",
             f"training FLOPs per example per step: {summary['train_flops_per_example']:.4e} = "
             f"{summary['train_flops_ratio']:.4f}x dense (3 f_D = {summary['train_flops_dense_per_example']:.4e})"]
    if summary["multiplier"] != 1.0:
        lines.append(f"extended training x{summary['multiplier']:g}: {summary['train_flops_ratio_extended']:.4f}x "
                     "the dense run")
    return "\n".join(lines)
