"""Converting models between dense ``nn.Linear`` and compressed :class:`SparseLinear` layers.

Recurrent layers (nn.LSTM / nn.GRU) become :class:`SparseLSTM` / :class:`SparseGRU`, whose weight
matrices are SparseLinear submodules named like torch's parameters (``rnn.weight_hh_l0``).

The per-layer choice is automatic: a layer goes sparse only where the CSR kernels beat dense
GEMM on CPU — density at most ``max_density`` (a whole layer step, forward and both gradients,
breaks even at ≈10 % density for 1024² and ≈15 % for 4096² on 2 cores; docs/performance.md)
and at least ``min_size`` weights (tiny layers are dominated by fixed per-call costs).
``overrides`` forces a backend per layer by fnmatch pattern (:class:`..base.BackendPolicy`; the
engine applies it again after every topology update).

When an optimizer is given, the layer's weight is swapped for its values vector in the
optimizer's parameter groups and every per-weight state tensor (momentum, Adam moments) is
gathered at the active positions — or scattered back to dense by :func:`densify_model`.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ....errors import ConfigError
from ..base import BackendPolicy
from .linear import SparseLinear
from .rnn import SPARSE_RNNS, SparseRNNBase, matrix_names, unsupported_reason

log = logging.getLogger(__name__)


def _masks_of(engine_or_masks) -> Mapping[str, torch.Tensor]:
    masks = getattr(engine_or_masks, "masks", engine_or_masks)
    if not isinstance(masks, Mapping):
        raise ConfigError("pass a SparsityEngine or a {weight name: bool mask} mapping")
    return masks


def replace_module(model: nn.Module, module_name: str, new: nn.Module) -> None:
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


def gather_state(flat: torch.Tensor):
    """Dense per-weight state → its entries at the active positions ``flat``."""
    return lambda t: t.reshape(-1)[flat].clone()


def scatter_state(flat: torch.Tensor, like: torch.Tensor):
    """Per-connection state at positions ``flat`` → a dense tensor shaped as ``like`` (0 elsewhere)."""
    def scatter(t: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(like.numel(), dtype=t.dtype, device=t.device)
        out[flat] = t
        return out.view_as(like)
    return scatter


def replace_layer(model: nn.Module, module_name: str, new: nn.Module, old_weight: nn.Parameter,
                  new_weight: nn.Parameter, convert, optimizer: Optional[torch.optim.Optimizer]) -> nn.Module:
    """Put ``new`` in place of ``model.<module_name>``: the optimizer steps ``new_weight`` instead of
    ``old_weight`` (per-weight state ``convert``-ed) and the bias Parameter moves over as the same
    object (its optimizer state stays valid). Returns ``new``."""
    old = model.get_submodule(module_name)
    swap_parameter(optimizer, old_weight, new_weight, convert)
    if old.bias is not None:
        new.bias = old.bias
    replace_module(model, module_name, new)
    return new


def compress_linear(model: nn.Module, module_name: str, mask: torch.Tensor,
                    optimizer: Optional[torch.optim.Optimizer] = None, cache_transpose: bool = True) -> SparseLinear:
    """Replace ``model.<module_name>`` (an nn.Linear) by a SparseLinear holding its weights
    under ``mask``; returns the new layer."""
    linear = model.get_submodule(module_name)
    layer = SparseLinear.from_dense(linear, mask, cache_transpose=cache_transpose)
    return replace_layer(model, module_name, layer, linear.weight, layer.values,
                         gather_state(layer.flat_indices()), optimizer)


def decompress_linear(model: nn.Module, module_name: str,
                      optimizer: Optional[torch.optim.Optimizer] = None) -> nn.Linear:
    """Replace a SparseLinear by the equivalent nn.Linear (state scattered back to dense)."""
    layer = model.get_submodule(module_name)
    linear = layer.to_linear()
    return replace_layer(model, module_name, linear, layer.values, linear.weight,
                         scatter_state(layer.flat_indices(), linear.weight), optimizer)


def rnn_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """(module name, module) of every nn.LSTM / nn.GRU / nn.RNN except the root."""
    return [(n, m) for n, m in model.named_modules() if n and isinstance(m, nn.RNNBase)]


def mask_counts(masks: Mapping[str, torch.Tensor]) -> Callable[[str], Optional[int]]:
    """The active count of weight ``name`` under ``masks`` (None: not sparsified), for :func:`choose_rnn`."""
    return lambda name: int(masks[name].sum()) if name in masks else None


def choose_rnn(policy: BackendPolicy, module_name: str, rnn: nn.Module,
               active: Callable[[str], Optional[int]]) -> Tuple[bool, str]:
    """(compress?, why) for the recurrent module ``module_name`` under ``policy``, ``active(name)``
    giving the active count of each sparsified weight matrix (None: not sparsified; e.g.
    :func:`mask_counts`): all its weight matrices or none.

    An override matching the module name decides; forcing "sparse" on a module that cannot be
    compressed (bidirectional, proj_size, a matrix without a mask) is a ConfigError.
    """
    forced = policy.override(module_name)
    if forced == "dense":
        return False, f"override {forced!r}"
    reason = unsupported_reason(rnn)
    if reason is None:
        names = [f"{module_name}.{n}" for n in matrix_names(rnn.num_layers)]
        counts = {n: active(n) for n in names}
        unmasked = [n for n in names if counts[n] is None]
        reason = f"{', '.join(unmasked)} not sparsified (kept dense or excluded)" if unmasked else None
    if reason is not None:
        if forced == "sparse":
            raise ConfigError(f"cannot compress '{module_name}' as the override asks: {reason}")
        return False, reason
    if forced == "sparse":
        return True, "override 'sparse'"
    dense = [n for n in names if policy.choose(n, getattr(rnn, n.rsplit(".", 1)[1]).numel(), counts[n]) == "dense"]
    if dense:
        return False, f"{', '.join(dense)} too dense or too small (all matrices must qualify)"
    return True, "every weight matrix qualifies"


def compress_rnn(model: nn.Module, module_name: str, masks: Mapping[str, torch.Tensor],
                 optimizer: Optional[torch.optim.Optimizer] = None,
                 cache_transpose: bool = True) -> Dict[str, SparseLinear]:
    """Replace ``model.<module_name>`` (an nn.LSTM / nn.GRU) by its SparseLSTM / SparseGRU under
    ``masks`` ({"<module_name>.weight_ih_l0": mask, ...}; a missing one means its nonzeros).
    Returns {weight name: compressed matrix}. Biases keep their Parameter objects."""
    rnn = model.get_submodule(module_name)
    reason = unsupported_reason(rnn)
    if reason is not None:
        raise ConfigError(f"cannot compress '{module_name}': {reason}")
    local = {n: masks[f"{module_name}.{n}"] for n in matrix_names(rnn.num_layers) if f"{module_name}.{n}" in masks}
    new = SPARSE_RNNS[type(rnn)].from_dense(rnn, local, cache_transpose=cache_transpose)
    for name, layer in new.matrices().items():
        swap_parameter(optimizer, getattr(rnn, name), layer.values, gather_state(layer.flat_indices()))
    replace_module(model, module_name, new)
    return {f"{module_name}.{n}": layer for n, layer in new.matrices().items()}


def decompress_rnn(model: nn.Module, module_name: str,
                   optimizer: Optional[torch.optim.Optimizer] = None) -> Dict[str, torch.Tensor]:
    """Replace a SparseLSTM / SparseGRU by the equivalent nn.LSTM / nn.GRU (state scattered back
    to dense); returns the masks {weight name: dense bool mask} of its matrices."""
    sparse = model.get_submodule(module_name)
    dense = sparse.to_dense()
    masks = {}
    for name, layer in sparse.matrices().items():
        weight = getattr(dense, name)
        swap_parameter(optimizer, layer.values, weight, scatter_state(layer.flat_indices(), weight))
        masks[f"{module_name}.{name}"] = layer.mask()
    replace_module(model, module_name, dense)
    return masks


def compressed_layers(model: nn.Module) -> Dict[str, Tuple[str, SparseLinear]]:
    """{weight name: (module name as the masked-dense engine sees it, compressed layer)}: a
    SparseLinear ``fc`` gives ``fc.weight``; a matrix of a SparseLSTM ``rnn`` gives
    ``rnn.weight_hh_l0`` (module ``rnn``), torch's name for it."""
    out, inside = {}, set()
    for n, m in model.named_modules():
        if isinstance(m, SparseRNNBase):
            for name, layer in m.matrices().items():
                out[f"{n}.{name}" if n else name] = (n, layer)
                inside.add(id(layer))
    for n, m in model.named_modules():
        if isinstance(m, SparseLinear) and id(m) not in inside:
            out[f"{n}.weight" if n else "weight"] = (n, m)
    return out


def sparsify_model(model: nn.Module, engine_or_masks, *, max_density: float = 0.1,
                   min_size: int = 1 << 16, overrides: Optional[Mapping[str, str]] = None,
                   optimizer: Optional[torch.optim.Optimizer] = None,
                   cache_transpose: bool = True) -> Dict[str, SparseLinear]:
    """Replace eligible ``nn.Linear`` layers by :class:`SparseLinear` holding their masked weights,
    eligible nn.LSTM / nn.GRU by :class:`SparseLSTM` / :class:`SparseGRU`.

    ``engine_or_masks``: a SparsityEngine (its masks are read; to keep training with it use
    :func:`use_sparse_backend` instead) or {"<module>.weight": bool mask}. Returns
    {weight name: new layer} (an RNN contributes one entry per weight matrix). See
    :class:`BackendPolicy` for the per-layer rule.
    """
    masks = _masks_of(engine_or_masks)
    policy = BackendPolicy(max_density, min_size, dict(overrides or {}), cache_transpose)
    out = {}
    for name, module_name in linear_weights(model, masks):
        mask = masks[name]
        if policy.choose(name, mask.numel(), int(mask.sum())) == "sparse":
            out[name] = compress_linear(model, module_name, mask, optimizer, policy.cache_transpose)
    for module_name, rnn in rnn_modules(model):
        chosen, why = choose_rnn(policy, module_name, rnn, mask_counts(masks))
        log.info("%s '%s': %s", "compressing" if chosen else "leaving dense", module_name, why)
        if chosen:
            out.update(compress_rnn(model, module_name, masks, optimizer, policy.cache_transpose))
    log.info("compressed %d of %d masked layers: %s", len(out), len(masks), ", ".join(out) or "none")
    return out


def linear_weights(model: nn.Module, names) -> list:
    """(weight name, module name) of every nn.Linear whose weight is named in ``names``."""
    # exact type: Linear subclasses (e.g. attention's out_proj) are read as plain tensors elsewhere;
    # the root module cannot be replaced in place
    return [(f"{m}.weight", m) for m, mod in model.named_modules()
            if m and type(mod) is nn.Linear and f"{m}.weight" in names]


def densify_model(model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None) -> Dict[str, torch.Tensor]:
    """Replace every SparseLinear by an equivalent nn.Linear and every SparseLSTM / SparseGRU by
    an nn.LSTM / nn.GRU; returns their masks {weight name: dense bool mask} (the masked-dense
    engine's format)."""
    masks = {}
    for module_name in [n for n, m in model.named_modules() if isinstance(m, SparseRNNBase)]:
        masks.update(decompress_rnn(model, module_name, optimizer))
    for module_name, layer in [(n, m) for n, m in model.named_modules() if isinstance(m, SparseLinear)]:
        masks[f"{module_name}.weight" if module_name else "weight"] = layer.mask()
        decompress_linear(model, module_name, optimizer)
    return masks
