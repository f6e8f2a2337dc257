"""Loss along the straight line between two solutions (Evci et al., ICML 2020, §5, Fig. 6).

θ(t) = (1 − t)·θ_A + t·θ_B for t on an even grid in [0, 1]; at each t the train and test loss
(and accuracy) of the model with weights θ(t) are measured. The RigL paper uses it to show that
a Static solution and the RigL solution started from it are separated by a loss barrier that
Static training alone cannot cross.

Masks: the interpolated weights are used as they are. Both endpoints are already masked (masked
weights are physically zero), so θ(t) is zero wherever both masks are zero and its support is
the union of the two masks in between; no mask is re-applied. Floating-point state (weights,
BatchNorm running statistics) is interpolated; integer buffers (``num_batches_tracked``) are
taken from A. Train loss is measured on the training set without augmentation.

:func:`paper_experiment` runs the paper's setting end to end: train Static, train RigL started
from the Static solution (``train.init_from``), interpolate between the two.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch

from ..config import RunConfig
from ..errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

#: config keys that must agree between the two runs (same architecture, same data)
SAME_KEYS = ("data.name", "data.options", "model.name", "model.width", "model.options")


def interpolate_state(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], t: float) -> Dict[str, torch.Tensor]:
    """(1 − t)·a + t·b for floating tensors; other tensors (integer counters) come from ``a``."""
    if set(a) != set(b):
        raise CheckpointError(f"the two models have different parameters: {sorted(set(a) ^ set(b))[:5]}")
    out = {}
    for k, va in a.items():
        vb = b[k]
        if va.shape != vb.shape:
            raise CheckpointError(f"'{k}' has shape {tuple(va.shape)} in A but {tuple(vb.shape)} in B; "
                                  "interpolate runs of the same architecture")
        out[k] = torch.lerp(va, vb.to(va.dtype), float(t)) if va.is_floating_point() else va.clone()
    return out


def _load_run(run_dir: Path):
    from ..train.checkpoint import load_checkpoint
    from .run_store import load_run_config

    cfg = load_run_config(run_dir)
    ck = load_checkpoint(run_dir / "checkpoint.pt", map_location="cpu")
    if "model" not in ck:
        raise CheckpointError(f"checkpoint of '{run_dir}' has no model weights")
    return cfg, ck["model"]


def _check_compatible(a: RunConfig, b: RunConfig) -> None:
    from ..config import flat_items, to_dict

    fa, fb = dict(flat_items(to_dict(a))), dict(flat_items(to_dict(b)))
    diff = [k for k in SAME_KEYS if fa.get(k) != fb.get(k)]
    if diff:
        raise ConfigError(f"the two runs differ in {', '.join(diff)}; interpolate runs with the same "
                          "dataset and model")


def _eval_sets(cfg: RunConfig, train_examples: int):
    """(train, test) evaluation batches of the run's dataset; train without augmentation,
    optionally only its first ``train_examples`` examples."""
    from torch.utils.data import Subset

    from ..data import default_data_root, load_dataset
    from ..train.batches import eval_batches

    d = cfg.data
    splits = load_dataset(d.name, d.root or default_data_root(), download=False, val_size=d.val_size,
                          augment=False, seed=cfg.seed, **d.options)
    train = splits.train
    if 0 < train_examples < len(train):
        train = Subset(train, range(train_examples))
    return splits, {"train": eval_batches(train, d.eval_batch_size), "test": eval_batches(splits.test, d.eval_batch_size)}


def _model_config(cfg: RunConfig, info):
    """The model config the run was trained with (a method may adjust it, e.g. Small-Dense's width)."""
    from ..registry import METHODS
    from ..sparsity import methods  # noqa: F401  (registers the built-in methods)
    from ..sparsity.run import adjusted_config

    return adjusted_config(METHODS.get(cfg.sparsity.method), cfg, info).model


def _device(name: Optional[str]) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def interpolate(run_a: str | Path, run_b: str | Path, points: int = 21, train_examples: int = 0,
                device: Optional[str] = None) -> Dict[str, Any]:
    """Train/test loss and accuracy at ``points`` evenly spaced t in [0, 1] between the final
    weights of ``run_a`` (t = 0) and ``run_b`` (t = 1).

    Args:
        run_a, run_b: run directories (with config.json and checkpoint.pt) of the same model and data.
        points: number of t values (≥ 2), endpoints included.
        train_examples: evaluate train loss on the first N training examples (0: all).
        device: torch device (default: CUDA if available, else CPU).

    Returns a JSON-ready dict: ``t``, ``train_loss``, ``test_loss``, ``train_accuracy``,
    ``test_accuracy``, the two run directories and a note on how masks are treated.
    """
    from ..models import build_model
    from ..train.evaluate import evaluate

    if points < 2:
        raise ConfigError(f"points must be >= 2 (the two endpoints), got {points}")
    (cfg_a, sa), (cfg_b, sb) = _load_run(Path(run_a)), _load_run(Path(run_b))
    _check_compatible(cfg_a, cfg_b)
    splits, sets = _eval_sets(cfg_a, train_examples)
    dev = _device(device)
    m = _model_config(cfg_a, splits.info)
    model = build_model(m.name, splits.info, width=m.width, **m.options).to(dev)
    ts = [i / (points - 1) for i in range(points)]
    curve: Dict[str, list] = {f"{s}_{m}": [] for s in sets for m in ("loss", "accuracy")}
    for t in ts:
        model.load_state_dict(interpolate_state(sa, sb, t))
        for split, batches in sets.items():
            m = evaluate(model, batches, dev, splits.info.task)
            curve[f"{split}_loss"].append(m["loss"])
            curve[f"{split}_accuracy"].append(m["accuracy"])
        log.info("t=%.3f train loss %.4f test loss %.4f", t, curve["train_loss"][-1], curve["test_loss"][-1])
    return {"run_a": str(run_a), "run_b": str(run_b), "method_a": cfg_a.sparsity.method,
            "method_b": cfg_b.sparsity.method, "t": ts, **curve,
            "train_examples": train_examples or len(splits.train),
            "masks": "interpolated weights used as is (support = union of the two masks); no mask re-applied"}


def plot_curve(curve: Mapping[str, Any], path: str | Path) -> Path:
    """Train and test loss against t (A at 0, B at 1) as a PNG."""
    from ..reports.plots import new_figure, save_figure

    fig, ax = new_figure()
    for split, style in (("train", "-o"), ("test", "--s")):
        ax.plot(curve["t"], curve[f"{split}_loss"], style, ms=3, label=f"{split} loss")
    a, b = curve.get("method_a", "A"), curve.get("method_b", "B")
    ax.set_xlabel(f"t   (0 = {a}: {Path(curve['run_a']).name},  1 = {b}: {Path(curve['run_b']).name})", fontsize=7)
    ax.set_ylabel("loss")
    ax.set_title(f"linear interpolation {a} → {b}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, Path(path))


def write_landscape(run_a: str | Path, run_b: str | Path, out: str | Path, points: int = 21,
                    train_examples: int = 0, device: Optional[str] = None) -> Dict[str, Any]:
    """:func:`interpolate`, then write the curve as JSON next to ``out`` and the PNG at ``out``.
    The JSON comes first: without matplotlib the ConfigError names the saved curve."""
    curve = interpolate(run_a, run_b, points, train_examples, device)
    png = Path(out)
    png.with_suffix(".json").write_text(json.dumps(curve, indent=2))
    try:
        plot_curve(curve, png)
    except ConfigError as e:
        raise ConfigError(f"{e} (the curve is saved in {png.with_suffix('.json')})") from None
    return curve


def paper_experiment(cfg: RunConfig, out: str | Path, points: int = 21, train_examples: int = 0,
                     rigl_options: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The RigL paper's §5 setting: train ``cfg`` as Static, then RigL (``cfg``'s sparsity and
    distribution; method options ``rigl_options``, default ``cfg.sparsity.options``) started
    from the Static solution for the same length, then write the interpolation between them to
    ``out`` (PNG + JSON).
    Both runs are ordinary (idempotent) run directories under ``cfg.out_dir``."""
    from .run_store import run_dir_for, train_run

    static = dataclasses.replace(cfg, sparsity=dataclasses.replace(cfg.sparsity, method="static", options={}))
    train_run(static)
    static_dir = run_dir_for(static)
    rigl = dataclasses.replace(
        cfg, sparsity=dataclasses.replace(cfg.sparsity, method="rigl", options=dict(
            cfg.sparsity.options if rigl_options is None else rigl_options)),
        train=dataclasses.replace(cfg.train, init_from=str(static_dir)))
    train_run(rigl)
    return write_landscape(static_dir, run_dir_for(rigl), out, points, train_examples, cfg.train.device
                           if cfg.train.device != "auto" else None)


__all__ = ["interpolate_state", "interpolate", "plot_curve", "write_landscape", "paper_experiment"]
