"""Converting models between dense ``nn.Linear`` and compressed :class:`SparseLinear` layers.

The per-layer choice is automatic: a layer goes sparse only where the CSR kernels beat dense
GEMM on CPU — density at most ``max_density`` (a whole layer step, forward and both gradients,
breaks even at ≈10 % density for 1024² and ≈15 % for 4096² on 2 cores; docs/performance.md)
and at least ``min_size`` weights (tiny layers are dominated by fixed per-call costs).
``overrides`` forces a backend per layer by fnmatch pattern. ``SparseEngine`` applies the rule
again after every topology update, so a layer pruned below ``max_density`` (GMP) is compressed
then; a compressed layer is never decompressed automatically (``use_dense_backend`` does that).

When an optimizer is given, the layer's weight is swapped for its values vector in the
optimizer's parameter groups and every per-weight state tensor (momentum, Adam moments) is
gathered at the active positions — or scattered back to dense by :func:`densify_model`.
"""
from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional

import torch
from torch import nn

from ..errors import ConfigError
from ..sparsity.topk import count_active
from .linear import SparseLinear

log = logging.getLogger(__name__)

BACKENDS = ("sparse", "dense")


@dataclass(frozen=True)
class BackendPolicy:
    """Which masked Linear layers are stored compressed.

    Args:
        max_density: compress only layers with at most this fraction of active weights.
        min_size: compress only layers with at least this many weights (dense entries).
        overrides: {fnmatch pattern over weight names: "sparse" | "dense"}; the first matching
            pattern wins over the automatic rule (a non-Linear layer always stays dense).
        cache_transpose: compressed layers keep Wᵀ's structure between steps (faster backward,
            8 more bytes per connection); see :class:`SparseLinear`.
    """

    max_density: float = 0.1
    min_size: int = 1 << 16
    overrides: Mapping[str, str] = field(default_factory=dict)
    cache_transpose: bool = True

    def __post_init__(self):
        bad = {p: b for p, b in self.overrides.items() if b not in BACKENDS}
        if bad:
            raise ConfigError(f"backend overrides {bad} are invalid; use 'sparse' or 'dense'")
        if not 0.0 <= self.max_density <= 1.0:
            raise ConfigError(f"max_density must be in [0, 1], got {self.max_density}")

    def choose(self, name: str, numel: int, active: int) -> str:
        """'sparse' or 'dense' for weight ``name`` with ``numel`` entries, ``active`` of them active."""
        for pattern, backend in self.overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                return backend
        # compare counts, not floats: a layer built at density d has count_active(numel, d) weights
        small_enough = active <= count_active(numel, self.max_density)
        return "sparse" if small_enough and numel >= self.min_size else "dense"


def _masks_of(engine_or_masks) -> Mapping[str, torch.Tensor]:
    masks = getattr(engine_or_masks, "masks", engine_or_masks)
    if not isinstance(masks, Mapping):
        raise ConfigError("pass a SparsityEngine or a {weight name: bool mask} mapping")
    return masks


def _replace_module(model: nn.Module, module_name: str, new: nn.Module) -> None:
    parent_name, _, child = module_name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def swap_parameter(optimizer: Optional[torch.optim.Optimizer], old: nn.Parameter, new: nn.Parameter,
                   convert) -> None:
    """Put ``new`` where ``old`` was in ``optimizer``; per-weight state tensors (same shape as
    ``old``) become ``convert(tensor)``, other state (Adam's step count) is kept as is."""
    if optimizer is None:
        return
    for group in optimizer.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    state = optimizer.state.pop(old, None)
    if state is not None:
        optimizer.state[new] = {k: convert(v) if torch.is_tensor(v) and v.shape == old.shape else v
                                for k, v in state.items()}


def compress_linear(model: nn.Module, module_name: str, mask: torch.Tensor,
                    optimizer: Optional[torch.optim.Optimizer] = None, cache_transpose: bool = True) -> SparseLinear:
    """Replace ``model.<module_name>`` (an nn.Linear) by a SparseLinear holding its weights
    under ``mask``; returns the new layer."""
    linear = model.get_submodule(module_name)
    layer = SparseLinear.from_dense(linear, mask, cache_transpose=cache_transpose)
    flat = layer.flat_indices()
    swap_parameter(optimizer, linear.weight, layer.values, lambda t: t.reshape(-1)[flat].clone())
    if linear.bias is not None:
        layer.bias = linear.bias  # same Parameter object: its optimizer state stays valid
    _replace_module(model, module_name, layer)
    return layer


def decompress_linear(model: nn.Module, module_name: str,
                      optimizer: Optional[torch.optim.Optimizer] = None) -> nn.Linear:
    """Replace a SparseLinear by the equivalent nn.Linear (state scattered back to dense)."""
    layer = model.get_submodule(module_name)
    linear = layer.to_linear()
    flat = layer.flat_indices()

    def scatter(t: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(linear.weight.numel(), dtype=t.dtype, device=t.device)
        out[flat] = t
        return out.view_as(linear.weight)

    swap_parameter(optimizer, layer.values, linear.weight, scatter)
    if layer.bias is not None:
        linear.bias = layer.bias
    _replace_module(model, module_name, linear)
    return linear


def sparsify_model(model: nn.Module, engine_or_masks, *, max_density: float = 0.1,
                   min_size: int = 1 << 16, overrides: Optional[Mapping[str, str]] = None,
                   optimizer: Optional[torch.optim.Optimizer] = None,
                   cache_transpose: bool = True) -> Dict[str, SparseLinear]:
    """Replace eligible ``nn.Linear`` layers by :class:`SparseLinear` holding their masked weights.

    ``engine_or_masks``: a SparsityEngine (its masks are read; to keep training with it use
    :func:`use_sparse_backend` instead) or {"<module>.weight": bool mask}. Returns
    {weight name: new layer}. See :class:`BackendPolicy` for the per-layer rule.
    """
    masks = _masks_of(engine_or_masks)
    policy = BackendPolicy(max_density, min_size, dict(overrides or {}), cache_transpose)
    out = {}
    for name, module_name in linear_weights(model, masks):
        mask = masks[name]
        if policy.choose(name, mask.numel(), int(mask.sum())) == "sparse":
            out[name] = compress_linear(model, module_name, mask, optimizer, policy.cache_transpose)
    log.info("compressed %d of %d masked layers: %s", len(out), len(masks), ", ".join(out) or "none")
    return out


def linear_weights(model: nn.Module, names) -> list:
    """(weight name, module name) of every nn.Linear whose weight is named in ``names``."""
    # exact type: Linear subclasses (e.g. attention's out_proj) are read as plain tensors elsewhere;
    # the root module cannot be replaced in place
    return [(f"{m}.weight", m) for m, mod in model.named_modules()
            if m and type(mod) is nn.Linear and f"{m}.weight" in names]


def densify_model(model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None) -> Dict[str, torch.Tensor]:
    """Replace every SparseLinear by an equivalent nn.Linear; returns their masks
    {weight name: dense bool mask} (the masked-dense engine's format)."""
    masks = {}
    for module_name, layer in [(n, m) for n, m in model.named_modules() if isinstance(m, SparseLinear)]:
        masks[f"{module_name}.weight" if module_name else "weight"] = layer.mask()
        decompress_linear(model, module_name, optimizer)
    return masks
