"""Mask bookkeeping: which tensors are sparsified, exact-count masks, applying them, reporting.

Masks are boolean tensors keyed by parameter name (as in ``model.named_parameters()``). They
live in the engine, not on the model, so the model's state_dict keeps its plain keys; masked
weights are kept physically zero by :func:`apply_masks`.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from . import patterns as P
from .topk import count_active

#: module types whose weights are sparsified by default
SPARSE_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
#: recurrent modules: their ``weight_ih_l*``/``weight_hh_l*`` matrices are sparsified
RNN_MODULES = (nn.RNNBase,)
#: modules whose parameters always stay dense unless named by ``include``
DENSE_MODULES = (nn.Embedding, nn.EmbeddingBag, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


@dataclass(frozen=True)
class Target:
    """One sparsified tensor: parameter ``name`` (``module.weight``) of module ``module_name``."""

    name: str
    module_name: str
    param: nn.Parameter

    @property
    def shape(self) -> tuple:
        return tuple(self.param.shape)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside DistributedDataParallel / DataParallel wrappers."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _by_module(logical: Sequence[Target]) -> Dict[str, List[Target]]:
    out: Dict[str, List[Target]] = {}
    for t in logical:
        out.setdefault(t.module_name, []).append(t)
    return out


def _default_candidates(model: nn.Module, logical: Sequence[Target] = ()) -> List[Target]:
    """Conv/Linear weights and RNN weight matrices, skipping tensors shared with an embedding;
    ``logical`` targets (layers the model holds compressed) take their module's place in order."""
    shared = {id(p) for m in model.modules() if isinstance(m, DENSE_MODULES) for p in m.parameters()}
    seen, out, at = set(), [], _by_module(logical)
    for mname, module in model.named_modules():
        out += at.get(mname, [])
        for pname, p in module.named_parameters(recurse=False):
            wanted = (isinstance(module, SPARSE_MODULES) and pname == "weight") or (
                isinstance(module, RNN_MODULES) and pname.startswith("weight_")
            )
            if wanted and id(p) not in shared and id(p) not in seen:
                seen.add(id(p))
                out.append(Target(f"{mname}.{pname}" if mname else pname, mname, p))
    return out


def _matching(model: nn.Module, patterns: Sequence[str], logical: Sequence[Target] = ()) -> List[Target]:
    """All parameters with ndim >= 2 (and ``logical`` targets) whose name matches one of
    ``patterns`` (fnmatch)."""
    out, seen, at = [], set(), _by_module(logical)
    for mname, module in model.named_modules():
        out += [t for t in at.get(mname, []) if any(fnmatch.fnmatchcase(t.name, pat) for pat in patterns)]
        for pname, p in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if p.dim() >= 2 and id(p) not in seen and any(fnmatch.fnmatchcase(full, pat) for pat in patterns):
                seen.add(id(p))
                out.append(Target(full, mname, p))
    return out


def find_targets(model: nn.Module, *, include: Optional[Sequence[str]] = None,
                 exclude: Optional[Sequence[str]] = None, dense_first: bool = False,
                 dense_last: bool = False, logical: Sequence[Target] = ()) -> tuple[List[Target], List[Target]]:
    """Split candidate weights into (sparsified targets, weights kept dense by first/last rules).

    ``include``/``exclude`` are fnmatch patterns over parameter names (``"features.*"``,
    ``"fc1.weight"``); patterns that match nothing are an error, so typos do not pass silently.
    ``logical``: the weights of layers the model holds compressed (a shape-only ``Target`` each,
    named as the dense weight), candidates in their module's place.
    """
    model = unwrap(model)
    cands = _matching(model, include, logical) if include else _default_candidates(model, logical)
    for pats, what in ((include or (), "include"), (exclude or (), "exclude")):
        names = [n for n, _ in model.named_parameters()] + [t.name for t in logical]
        for pat in pats:
            if not any(fnmatch.fnmatchcase(n, pat) for n in names):
                raise ConfigError(f"{what} pattern '{pat}' matches no parameter; names look like: "
                                  f"{', '.join(names[:6])}")
    if exclude:
        cands = [t for t in cands if not any(fnmatch.fnmatchcase(t.name, p) for p in exclude)]
    if not cands:
        raise ConfigError("the model has no sparsifiable layer (Conv/Linear/RNN weights); "
                          "name tensors with include=[...] patterns")
    kept: List[Target] = []
    if dense_first and len(cands) > 1:
        kept.append(cands.pop(0))
    if dense_last and len(cands) > 1:
        kept.append(cands.pop())
    return cands, kept


def random_mask(shape: Sequence[int], n_active: int, generator: torch.Generator,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Exactly ``n_active`` True entries at uniformly random positions (drawn on CPU, so the
    result is identical whatever the device)."""
    numel = math.prod(shape)
    idx = torch.randperm(numel, generator=generator)[:n_active]
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[idx] = True
    return mask.view(*shape).to(device)


def random_masks(targets: Iterable[Target], densities: Mapping[str, float],
                 generator: torch.Generator, patterns: Optional[Mapping[str, P.Pattern]] = None) -> Dict[str, torch.Tensor]:
    """Exact-count random masks for every target at its layer density; a target with a structured
    pattern (``patterns``) gets whole units of it (:func:`patterns.random_mask`)."""
    out = {}
    for t in targets:
        p = (patterns or {}).get(t.name, P.UNSTRUCTURED)
        if p.structured:
            out[t.name] = P.random_mask(p, t.shape, p.count(t.shape, densities[t.name]), generator).to(t.param.device)
        else:
            out[t.name] = random_mask(t.shape, count_active(t.param.numel(), densities[t.name]), generator,
                                      t.param.device)
    return out


@torch.no_grad()
def apply_masks(targets: Iterable[Target], masks: Mapping[str, torch.Tensor]) -> None:
    """Zero every masked weight in place."""
    for t in targets:
        t.param.mul_(masks[t.name])


def density_report(targets: Sequence[Target], masks: Mapping[str, torch.Tensor],
                   kept_dense: Sequence[Target] = (), model: Optional[nn.Module] = None) -> dict:
    """Achieved densities: per layer, over sparsified layers, over all weight matrices and,
    when ``model`` is given, over every parameter (biases, norms and embeddings included)."""
    layers = {}
    for t in targets:
        active = int(masks[t.name].sum())
        layers[t.name] = {"shape": list(t.shape), "numel": t.param.numel(), "active": active,
                          "density": active / t.param.numel(), "sparsified": True}
    for t in kept_dense:
        layers[t.name] = {"shape": list(t.shape), "numel": t.param.numel(), "active": t.param.numel(),
                          "density": 1.0, "sparsified": False}
    sp = [v for v in layers.values() if v["sparsified"]]
    out = {
        "layers": layers,
        "sparsified_density": sum(v["active"] for v in sp) / max(1, sum(v["numel"] for v in sp)),
        "weights_density": sum(v["active"] for v in layers.values())
        / max(1, sum(v["numel"] for v in layers.values())),
    }
    if model is not None:
        total = sum(p.numel() for p in unwrap(model).parameters())
        masked_out = sum(v["numel"] - v["active"] for v in sp)
        out["model_params"] = total
        out["model_nonzero_params"] = total - masked_out
        out["model_density"] = (total - masked_out) / max(1, total)
    return out
