"""Building a model sparse from the start: compressed layers are created in compressed form, so
the peak memory of construction is that of the nonzeros (plus one dense layer at a time), not of
the dense model.

:func:`build_sparse` runs the model's constructor on the meta device (shapes only, no memory),
plans the per-layer densities with :func:`..distributions.plan_densities` (the engine's own
planner: same targets, same exact counts), then for each planned sparse nn.Linear / nn.Conv2d
(groups = 1) draws an exact-count uniformly random pattern and materialises the layer alone,
initialises it with the model's init rule and keeps only the values at the pattern: the values are
the init's entries at the sampled positions, exactly what masking a dense init gives (every init
rule of torch draws the entries independently, so this is the same distribution as masking the
whole model's init). Everything else (norms, biases, layers planned dense, grouped convolutions)
is materialised and initialised module by module.

The result trains with ``SparsityEngine(model, optimizer, method)`` (no ``sparsity``: the compressed
layers' patterns are the masks and their densities the plan's), whose masks are then random with
the planned counts, as a fresh engine's random init would give.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, Optional, Union

import torch
from torch import nn

from ...errors import ConfigError
from ...models.common import init_cnn
from ..distributions import plan_densities
from .conv.layer import SparseConv2d, unsupported_reason
from .csr.convert import replace_module
from .csr.indices import random_flat
from .csr.linear import SparseLinear

log = logging.getLogger(__name__)

Init = Callable[[nn.Module], None]


def reset_init(module: nn.Module) -> None:
    """PyTorch's default init of one module (its own ``reset_parameters``)."""
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        reset()


def cnn_init(module: nn.Module) -> None:
    """The init of this package's CNN families: the default, then torchvision's ResNet init
    (:func:`..models.common.init_cnn`: Kaiming-normal fan-out convs, unit/zero norms)."""
    reset_init(module)
    init_cnn(module)


INIT_RULES: Dict[str, Init] = {"default": reset_init, "cnn": cnn_init}


def _values_at(module: nn.Module, flat: torch.Tensor, init: Init, device) -> tuple:
    """Materialise ``module`` alone, initialise it and keep (weight at ``flat``, bias)."""
    module.to_empty(device=device)
    init(module)
    w = module.weight.detach().reshape(-1)[flat].clone()
    b = None if module.bias is None else module.bias.detach().clone()
    return w, b


def _compressed(module: nn.Module, count: int, init: Init, generator: torch.Generator, device,
                conv_kernel: str) -> Optional[nn.Module]:
    """The compressed layer of ``module`` with ``count`` random connections, or None if it has none."""
    if type(module) is nn.Linear:
        flat = random_flat((module.out_features, module.in_features), count, generator).to(device)
        w, b = _values_at(module, flat, init, device)
        return SparseLinear(module.in_features, module.out_features, flat, w, b)
    if type(module) is nn.Conv2d and unsupported_reason(module) is None:
        shape = (module.out_channels, module.weight[0].numel())
        flat = random_flat(shape, count, generator).to(device)
        geometry = dict(stride=module.stride, padding=module.padding, dilation=module.dilation)
        w, b = _values_at(module, flat, init, device)
        layer = SparseConv2d(module.in_channels, module.out_channels, module.kernel_size, flat, w, b, **geometry)
        layer.kernel = conv_kernel
        return layer
    return None


def _materialise_rest(model: nn.Module, init: Init, device) -> None:
    """Allocate and initialise, module by module, every tensor still on the meta device."""
    for module in model.modules():
        own = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        if any(t.is_meta for t in own):
            module.to_empty(device=device, recurse=False)
            init(module)


def build_sparse(factory: Callable[[], nn.Module], sparsity: float, distribution: str = "erk", *,
                 init: Union[str, Init] = "default", seed: int = 0, device: Union[str, torch.device] = "cpu",
                 conv_kernel: str = "auto", **rules) -> nn.Module:
    """``factory()``'s model with every planned sparse Linear / Conv2d (groups = 1) built compressed.

    Args:
        factory: builds the dense architecture (called once, on the meta device).
        sparsity, distribution, rules: as for the engine (``dense_first``, ``dense_last``,
            ``include``, ``exclude``, ``custom``, ``erk_power``): the same plan.
        init: how the model initialises one module: "default" (``reset_parameters``), "cnn" (this
            package's CNN families: :func:`cnn_init`) or a callable ``init(module)``.
        seed: seeds the patterns (values come from torch's global generator, as in a dense build).
    Layers the plan makes sparse but that cannot be compressed (grouped convolutions, other layer
    types) are built dense and left unsparsified; they are logged.
    """
    init_fn = INIT_RULES.get(init) if isinstance(init, str) else init
    if init_fn is None:
        raise ConfigError(f"unknown init rule '{init}'; use one of {', '.join(INIT_RULES)} or a callable")
    with torch.device("meta"):
        model = factory()
    plan = plan_densities(model, sparsity, distribution, **rules)
    generator = torch.Generator().manual_seed(int(seed))
    left = []
    for t in plan.targets:
        module = model.get_submodule(t.module_name) if t.module_name else None
        if plan.densities[t.name] >= 1.0 or module is None or t.name != f"{t.module_name}.weight":
            continue
        layer = _compressed(module, plan.counts[t.name], init_fn, generator, device, conv_kernel)
        if layer is None:
            left.append(t.name)
        else:
            replace_module(model, t.module_name, layer)
    if left:
        log.warning("build_sparse: %s cannot be built compressed and stay dense", ", ".join(left))
    _materialise_rest(model, init_fn, device)
    return model
