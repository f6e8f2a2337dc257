"""``sparsetrain flops``: inference and training FLOPs of a model at a sparsity, without data or training.

The layer densities are the ones a run would start from: the sparsified tensors are chosen by
:func:`sparsetrain.sparsity.masks.find_targets` with the engine's dense-first/last rules and
given exact counts from the distribution (:func:`sparsetrain.sparsity.distributions.layer_densities`).
The input shape comes from the dataset registry (:func:`sparsetrain.data.dataset_info`), so
ImageNet-size models are counted with no dataset on disk. Conventions: ``sparsetrain.flops``
and docs/flops.md (Evci et al., ICML 2020, App. H).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from typing import TYPE_CHECKING, Any, Dict, Optional

from .cli import _EXTRA_PARSERS, command
from .errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .flops import FlopsReport


def add_parser(sub) -> None:
    """Register the ``flops`` subcommand on ``sub`` (argparse subparsers)."""
    p = sub.add_parser("flops", help="per-layer inference FLOPs and training FLOPs of a method (no data needed)")
    p.add_argument("--model", required=True, help="registered model name (see `sparsetrain list`)")
    p.add_argument("--dataset", required=True, help="dataset whose input shape and classes the model gets")
    p.add_argument("--sparsity", type=float, default=0.9, help="global target sparsity in [0, 1) (default 0.9)")
    p.add_argument("--distribution", default="erk", help="layer distribution: uniform, er, erk (default erk)")
    p.add_argument("--method", default="rigl", help="training method whose training FLOPs to report (default rigl)")
    p.add_argument("--width", type=float, default=1.0, help="model width multiplier (default 1)")
    p.add_argument("--multiplier", type=float, default=1.0, help="extended training factor M (default 1)")
    p.add_argument("--delta-t", type=int, default=100, help="steps between mask updates, RigL's ΔT (default 100)")
    p.add_argument("--erk-power", type=float, default=1.0, help="ERK exponent (default 1)")
    p.add_argument("--dense-first", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the first sparsifiable layer dense (default: on for uniform, off otherwise)")
    p.add_argument("--dense-last", action=argparse.BooleanOptionalAction, default=False,
                   help="keep the last sparsifiable layer dense (default off)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def build_method(name: str, delta_t: int):
    """Method ``name`` with ΔT set where the method has that option."""
    from .registry import METHODS
    import sparsetrain.sparsity.methods  # noqa: F401  (registers the built-in methods)

    cls = METHODS.get(name)
    fields = {f.name for f in dataclasses.fields(cls.Options)}
    return cls(**({"delta_t": delta_t} if "delta_t" in fields else {}))


def start_densities(model, method, sparsity: float, distribution: str, dense_first: Optional[bool],
                    dense_last: bool, erk_power: float) -> Dict[str, float]:
    """Exact per-tensor densities a run starts from (empty for engine-less methods)."""
    from .sparsity.distributions import plan_densities

    if not method.uses_masks:
        return {}
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"--sparsity must be in [0, 1), got {sparsity}")
    plan = plan_densities(model, sparsity, distribution, dense_first=dense_first, dense_last=dense_last,
                          erk_power=erk_power)
    return plan.exact_densities()


def flops_summary(report: FlopsReport, method, multiplier: float) -> Dict[str, Any]:
    """Totals, inference ratio and training FLOPs per example per step, also as a multiple of dense."""
    from .flops import relative_to_dense

    if not multiplier > 0:
        raise ConfigError(f"--multiplier must be > 0, got {multiplier}")
    f_s, f_d = report.sparse, float(report.dense)
    train = method.training_flops(f_s, f_d)
    rel = relative_to_dense(train, f_d) if f_d else 1.0
    return {"inference_flops": f_s, "inference_flops_dense": f_d, "inference_flops_ratio": report.ratio,
            "train_flops_per_example": train, "train_flops_dense_per_example": 3.0 * f_d,
            "train_flops_ratio": rel, "multiplier": multiplier, "train_flops_ratio_extended": rel * multiplier}


def _text(args, report: FlopsReport, summary: Dict[str, Any]) -> str:
    shape = "x".join(map(str, report.input_shape))
    m = summary["multiplier"]
    lines = [report.table(), "",
             f"{args.model} on {args.dataset} (input {shape}), sparsity {args.sparsity:g}, "
             f"{args.distribution}, method {args.method}" + (f" (ΔT {args.delta_t})" if args.method == "rigl" else ""),
             f"inference FLOPs: dense {summary['inference_flops_dense']:.4e}, sparse {summary['inference_flops']:.4e}"
             f" = {summary['inference_flops_ratio']:.4f}x dense",
             f"training FLOPs per example per step: {summary['train_flops_per_example']:.4e} = "
             f"{summary['train_flops_ratio']:.4f}x dense (3 f_D = {summary['train_flops_dense_per_example']:.4e})"]
    if m != 1.0:
        lines.append(f"extended training x{m:g}: {summary['train_flops_ratio_extended']:.4f}x the dense run")
    return "\n".join(lines)


@command("flops")
def cmd_flops(args) -> int:
    """Print the per-layer table and totals (or ``--json``)."""
    from .data import dataset_info
    from .flops import count_flops
    from .models import build_model
    from .train.flops_meter import input_spec

    info = dataset_info(args.dataset)
    model = build_model(args.model, info, width=args.width)
    method = build_method(args.method, args.delta_t)
    dens = start_densities(model, method, args.sparsity, args.distribution, args.dense_first,
                           args.dense_last, args.erk_power)
    shape, dtype = input_spec(info)
    report = count_flops(model, shape, dens, input_dtype=dtype)
    summary = flops_summary(report, method, args.multiplier)
    if args.json:
        print(json.dumps({"model": args.model, "dataset": args.dataset, "sparsity": args.sparsity,
                          "distribution": args.distribution, "method": args.method, "width": args.width,
                          "delta_t": args.delta_t, **summary, **report.to_dict()}, indent=2))
    else:
        print(_text(args, report, summary))
    return 0


_EXTRA_PARSERS.append(add_parser)
