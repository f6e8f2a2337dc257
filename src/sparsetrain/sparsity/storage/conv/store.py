"""Conv storage: a sparsified nn.Conv2d held as a :class:`SparseConv2d` whose trainable tensor is
the vector of active values, in a :class:`CSRStore` (the same store as Linear layers: it works on
the weight as an (out × in·kh·kw) matrix, whose flat positions are the 4-D weight's own).

Topology updates therefore behave exactly as for Linear layers: drop by |w| over the values, grow
by the method's ``grow_scores_rows`` over blocks of output channels — RigL's dense gradient
∂L/∂W = G Xᵀ is formed one block of output channels at a time from the (input, output gradient)
factors captured in the backward pass of the steps that need it (``SparseConv2d.grad_rows``), with
the streaming exact top-k — and values, gradient and every per-weight optimizer state tensor
follow the new pattern (survivors keep theirs, new connections start at zero).

Which layers: plain nn.Conv2d with groups = 1 and zero padding given as numbers (grouped and
depthwise convolutions stay masked-dense, :func:`unsupported_reason`) whose density is at most
``policy.max_density``, whose weight has at least ``policy.conv_min_size`` entries (a forward
pass costs nnz × output positions, so a conv weight pays off far below a Linear's ``min_size``)
and, unless ``conv_kernel`` is "mkl" or "native", whose geometry sparseprop's kernels cover
(float32, square kernel, stride 1 or 2, no dilation): the unfold path pays the dense unfold in
every pass and trained slower than dense with MKL (docs/performance.md). ``policy.conv_kernel``
picks the products: "auto" (sparseprop's direct kernels where they cover the geometry, else
unfold + the native kernels where built, else unfold + MKL), "sparseprop", "native" or "mkl".
"""
from __future__ import annotations

import logging
from typing import Dict, Mapping, Optional

import torch
from torch import nn

from ...masks import Target
from ..base import STORAGES, BackendPolicy, LayerStore, Storage
from ..csr.convert import gather_state, replace_layer, scatter_state
from ..csr.store import CSRStore, saved_sparse
from ..dense import MaskedDenseStore
from .functional import sparseprop_supports
from .layer import SparseConv2d, geometry_of, unsupported_reason

log = logging.getLogger(__name__)


def conv_targets(model: nn.Module, stores: Mapping[str, LayerStore]) -> list:
    """Masked-dense stores holding the weight of a plain nn.Conv2d this storage can take."""
    out = []
    for s in stores.values():
        t = s.target
        if s.compressed or not t.module_name or t.name != f"{t.module_name}.weight":
            continue
        module = model.get_submodule(t.module_name)
        if type(module) is nn.Conv2d and unsupported_reason(module) is None:
            out.append(s)
    return out


def choose_conv(policy: BackendPolicy, name: str, conv: nn.Conv2d, active: int) -> str:
    """'sparse' or 'dense' for the weight ``name`` of ``conv``: an override, else density ≤
    max_density, at least ``conv_min_size`` weights and, under ``conv_kernel="auto"``, a geometry
    sparseprop's kernels cover (unfold + MKL trains 3–5× slower than dense: docs/performance.md)."""
    fast = policy.conv_kernel in ("mkl", "native") or sparseprop_supports(geometry_of(conv), conv.weight.dtype)
    if not fast and policy.override(name) is None:
        return "dense"
    return policy.choose(name, conv.weight.numel(), active, min_size=policy.conv_min_size)


def compress_conv(model: nn.Module, module_name: str, mask: torch.Tensor, policy: BackendPolicy,
                  optimizer: Optional[torch.optim.Optimizer] = None) -> SparseConv2d:
    """Replace ``model.<module_name>`` (an nn.Conv2d) by a SparseConv2d holding its weights under
    ``mask``; the optimizer's state of the weight is gathered at the pattern, the bias kept."""
    conv = model.get_submodule(module_name)
    layer = SparseConv2d.from_dense(conv, mask, cache_transpose=policy.cache_transpose)
    layer.kernel = policy.conv_kernel
    return replace_layer(model, module_name, layer, conv.weight, layer.values, gather_state(layer.flat_indices()),
                         optimizer)


def decompress_conv(model: nn.Module, module_name: str, optimizer: Optional[torch.optim.Optimizer] = None):
    """Replace a SparseConv2d by the equivalent nn.Conv2d (state scattered back to dense)."""
    layer = model.get_submodule(module_name)
    conv = layer.to_conv()
    return replace_layer(model, module_name, conv, layer.values, conv.weight,
                         scatter_state(layer.flat_indices(), conv.weight), optimizer)


def sparse_convs(model: nn.Module) -> Dict[str, tuple]:
    """{weight name: (module name, SparseConv2d)} of the compressed convolutions of ``model``."""
    return {f"{n}.weight": (n, m) for n, m in model.named_modules() if n and isinstance(m, SparseConv2d)}


class ConvStorage(Storage):
    """Moves plain nn.Conv2d layers to :class:`SparseConv2d` and back (module docstring)."""

    name = "conv"

    def compress(self, model, stores, policy, optimizer, announce) -> Dict[str, LayerStore]:
        out = {}
        for s in conv_targets(model, stores):
            choice = choose_conv(policy, s.name, model.get_submodule(s.target.module_name), s.n_active())
            log.log(logging.INFO if announce else logging.DEBUG, "sparse backend: conv '%s' (%d weights, "
                    "%d active): %s", s.name, s.numel, s.n_active(), choice)
            if choice == "sparse":
                out.update(self._compress(model, s.target, s.mask, policy, optimizer))
        return out

    def adopt(self, model, policy) -> Dict[str, LayerStore]:
        return {n: CSRStore(n, m, layer, policy.block_elems) for n, (m, layer) in sparse_convs(model).items()}

    def restore(self, model, stores, saved, policy, optimizer) -> Dict[str, LayerStore]:
        out = {}
        for s in conv_targets(model, stores):
            if saved_sparse(saved.get(s.name), s.shape):
                mask = saved[s.name].to_dense().to(device=s.param.device, dtype=torch.bool)
                out.update(self._compress(model, s.target, mask, policy, optimizer))
        return out

    def densify(self, model, stores, optimizer) -> Dict[str, LayerStore]:
        out = {}
        for name, (module_name, layer) in sparse_convs(model).items():
            if name in stores:
                mask = layer.mask()
                conv = decompress_conv(model, module_name, optimizer)
                out[name] = MaskedDenseStore(Target(name, module_name, conv.weight), mask)
        return out

    @staticmethod
    def _compress(model, target: Target, mask, policy: BackendPolicy, optimizer) -> Dict[str, CSRStore]:
        layer = compress_conv(model, target.module_name, mask, policy, optimizer)
        return {target.name: CSRStore(target.name, target.module_name, layer, policy.block_elems)}


STORAGES.register("conv")(ConvStorage())
