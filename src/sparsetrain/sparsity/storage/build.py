"""Building a model sparse from the start: compressed layers are created in compressed form, so
the peak memory of construction is that of the nonzeros, not of the dense model.

:func:`build_sparse` runs the model's constructor on the meta device (shapes only, no memory),
plans the per-layer densities with :func:`..distributions.plan_densities` (the engine's own
planner: same targets, same exact counts), then walks the modules in model order. A module holding
planned sparse weights that a storage can take (nn.Linear; nn.Conv2d with groups = 1; nn.LSTM /
nn.GRU as a whole) and that the storage policy would compress gets an exact-count uniformly random
pattern per weight (drawn in O(nnz) memory) and values at the pattern:

* for the named init rules (``"default"`` and this package's family rules), drawn directly from
  the law that rule gives each entry (:func:`entry_law`): the dense weight never exists;
* for an init callable, from the module materialised alone and initialised, then dropped (one
  dense layer at a time): exactly the entries masking that dense init keeps.

Both are the distribution of masking the whole model's init, since torch's init rules draw
entries independently. Every other module is materialised and initialised on its own, in model
order.

The model trains with ``SparsityEngine(model, optimizer, method, sparsity=..., <the same rules>)``
(the engine plans the model again, checks that each compressed layer holds its planned count and
gives the layers left dense random masks), or, with no ``sparsity``, adopts the compressed layers
as they are (the only targets).
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, Optional, Union

import torch
from torch import nn

from ...errors import ConfigError
from ...models.common import FAMILY_INITS
from ..distributions import plan_densities
from ..masks import Target
from .base import BackendPolicy
from .conv.layer import SparseConv2d, unsupported_reason as conv_unsupported
from .conv.store import choose_conv
from .csr.convert import choose_rnn, replace_module
from .csr.indices import random_flat
from .csr.linear import SparseLinear
from .csr.rnn import SPARSE_RNNS, matrix_names, unsupported_reason as rnn_unsupported

log = logging.getLogger(__name__)

Init = Callable[[nn.Module], None]


def reset_init(module: nn.Module) -> None:
    """PyTorch's default init of one module (its own ``reset_parameters``)."""
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        reset()


def _after_reset(family: Init) -> Init:
    def init(module: nn.Module) -> None:
        reset_init(module)
        family(module)
    return init


#: "default" (``reset_parameters``) and this package's family rules applied after it ("cnn":
#: Kaiming-normal fan-out convs, unit/zero norms; "wrn", "vgg": that plus their linear init)
INIT_RULES: Dict[str, Init] = {"default": reset_init, **{k: _after_reset(f) for k, f in FAMILY_INITS.items()}}


def every_layer(conv_kernel: str = "auto") -> BackendPolicy:
    """The policy that compresses every planned sparse layer a storage can take."""
    return BackendPolicy(max_density=1.0, min_size=0, conv_min_size=0, overrides={"*": "sparse"},
                         conv_kernel=conv_kernel)


def tied_parameters(model: nn.Module) -> List[str]:
    """Names of parameters that one module shares with another (``readout.weight is embedding.weight``)."""
    owner, tied = {}, []
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            name = f"{mname}.{pname}" if mname else pname
            if id(p) in owner:
                tied.append(f"{name} (= {owner[id(p)]})")
            owner.setdefault(id(p), name)
    return tied


def _materialise(module: nn.Module, init: Init, device) -> None:
    """Allocate ``module``'s own tensors (not its children's) and initialise it."""
    module.to_empty(device=device, recurse=False)
    init(module)


def _sparse_choice(module: nn.Module, module_name: str, targets: List[Target], counts: Dict[str, int],
                   policy: BackendPolicy) -> bool:
    """Whether ``module`` (holding the planned ``targets``) is built compressed under ``policy``."""
    names = [t.name for t in targets]
    if any(counts[n] >= t.param.numel() for n, t in zip(names, targets)):
        return False  # a layer the plan keeps at density 1 gains nothing from compression
    if type(module) is nn.Linear and names == [f"{module_name}.weight"]:
        return policy.choose(names[0], module.weight.numel(), counts[names[0]]) == "sparse"
    if type(module) is nn.Conv2d and names == [f"{module_name}.weight"] and conv_unsupported(module) is None:
        return choose_conv(policy, names[0], module, counts[names[0]]) == "sparse"
    if type(module) in SPARSE_RNNS and rnn_unsupported(module) is None and \
            len(names) == len(matrix_names(module.num_layers)):  # every weight matrix planned sparse
        return choose_rnn(policy, module_name, module, counts.get)[0]
    return False


Law = Callable[[str, int], torch.Tensor]


def _uniform(bound: float) -> Callable[[int], torch.Tensor]:
    return lambda n: (torch.rand(n) * 2 - 1) * bound


def entry_law(module: nn.Module, rule: object) -> Optional[Law]:
    """``law(param_name, n)``: ``n`` independent draws of one entry of ``module``'s parameter under
    the named init ``rule`` (torch's global generator), where that law is known; None otherwise.

    Known: nn.Linear and nn.Conv2d (groups = 1) ``reset_parameters`` — Kaiming-uniform with
    a = √5, i.e. U(±1/√fan_in), and a bias ~ U(±1/√fan_in); nn.LSTM / nn.GRU — every tensor
    ~ U(±1/√hidden); the family rules on top ("cnn", "wrn": convs N(0, 2/fan_out) with zero bias,
    "wrn" also zero linear bias; "vgg": that and linear weights N(0, 0.01²) with zero bias; see
    ``models.common``). Only these let a layer be built without ever holding its dense weight.
    """
    if rule not in INIT_RULES:
        return None
    zeros = lambda n: torch.zeros(n)  # noqa: E731
    if type(module) in SPARSE_RNNS:
        law = _uniform(module.hidden_size ** -0.5)
        return lambda name, n: law(n)
    if type(module) not in (nn.Linear, nn.Conv2d) or getattr(module, "groups", 1) != 1:
        return None
    fan_in = module.weight[0].numel()
    weight, bias = _uniform(fan_in ** -0.5), _uniform(fan_in ** -0.5)
    if type(module) is nn.Conv2d and rule != "default":
        fan_out = module.weight.shape[0] * module.weight[0][0].numel()
        std = (2.0 / fan_out) ** 0.5
        weight, bias = (lambda n: torch.randn(n) * std), zeros
    elif type(module) is nn.Linear and rule == "wrn":
        bias = zeros
    elif type(module) is nn.Linear and rule == "vgg":
        weight, bias = (lambda n: torch.randn(n) * 0.01), zeros
    return lambda name, n: (weight if name.startswith("weight") else bias)(n)


def _values(module: nn.Module, flats: Dict[str, torch.Tensor], init: Init, law: Optional[Law],
            device) -> Dict[str, torch.Tensor]:
    """Values of ``module``'s weights at ``flats`` ({weight name: flat positions}) and its biases:
    drawn from the init's law where known, else the entries of the module materialised alone."""
    names = [n for n, _ in module.named_parameters(recurse=False)]
    if law is not None:
        return {n: law(n, int(flats[n].numel()) if n in flats else getattr(module, n).numel()).to(device)
                for n in names}
    _materialise(module, init, device)
    return {n: getattr(module, n).detach().reshape(-1)[flats[n]].clone() if n in flats
            else getattr(module, n).detach().clone() for n in names}


def _compressed(module: nn.Module, module_name: str, counts: Dict[str, int], init: Init, law: Optional[Law],
                generator: torch.Generator, device, policy: BackendPolicy) -> nn.Module:
    """The compressed layer standing for ``module``: random patterns with the planned counts, the
    values the init rule gives there (drawn from its law, or ``module`` materialised alone for
    that, then dropped)."""
    if type(module) in SPARSE_RNNS:
        names = matrix_names(module.num_layers)
        shapes = {n: tuple(getattr(module, n).shape) for n in names}
        flats = {n: random_flat(shapes[n], counts[f"{module_name}.{n}"], generator).to(device) for n in names}
        values = _values(module, flats, init, law, device)
        matrices = [SparseLinear(shapes[n][1], shapes[n][0], flats[n], values[n], None,
                                 cache_transpose=policy.cache_transpose) for n in names]
        for m in matrices:
            m.kernel = policy.kernel
        biases = [values[n.replace("weight", "bias")] for n in names] if module.bias else None
        return SPARSE_RNNS[type(module)](module.input_size, module.hidden_size, matrices, biases,
                                         module.batch_first, module.dropout)
    shape = (module.weight.shape[0], module.weight[0].numel())
    flats = {"weight": random_flat(shape, counts[f"{module_name}.weight"], generator).to(device)}
    values = _values(module, flats, init, law, device)
    bias = values.get("bias")
    if type(module) is nn.Linear:
        layer = SparseLinear(module.in_features, module.out_features, flats["weight"], values["weight"], bias,
                             cache_transpose=policy.cache_transpose)
        layer.kernel = policy.kernel
        return layer
    layer = SparseConv2d(module.in_channels, module.out_channels, module.kernel_size, flats["weight"],
                         values["weight"], bias, stride=module.stride, padding=module.padding,
                         dilation=module.dilation, cache_transpose=policy.cache_transpose)
    layer.kernel = policy.conv_kernel
    return layer


def build_sparse(factory: Callable[[], nn.Module], sparsity: float, distribution: str = "erk", *,
                 init: Union[str, Init] = "default", seed: int = 0, device: Union[str, torch.device] = "cpu",
                 policy: Optional[BackendPolicy] = None, conv_kernel: str = "auto", **rules) -> nn.Module:
    """``factory()``'s model with its planned sparse layers built compressed.

    Args:
        factory: builds the dense architecture (called once, on the meta device).
        sparsity, distribution, rules: as for the engine (``dense_first``, ``dense_last``,
            ``include``, ``exclude``, ``custom``, ``erk_power``): the same plan.
        init: how the model initialises one module: "default" (``reset_parameters``), a family
            rule of this package's models ("cnn", "wrn", "vgg": ``models.init_rule`` names a
            model's) or a callable ``init(module)``.
        seed: seeds the patterns (values come from torch's global generator, as in a dense build).
        policy: the storage policy deciding which layers are compressed (that of the engine that
            will train the model); None: every planned sparse nn.Linear, nn.Conv2d (groups = 1)
            and nn.LSTM / nn.GRU a storage can take, with ``conv_kernel``.
    Layers the plan makes sparse but that are not built compressed stay dense (the engine masks
    them); which ones is logged.
    """
    init_fn = INIT_RULES.get(init) if isinstance(init, str) else init
    if init_fn is None:
        raise ConfigError(f"unknown init rule '{init}'; use one of {', '.join(INIT_RULES)} or a callable")
    policy = policy or every_layer(conv_kernel)
    with torch.device("meta"):
        model = factory()
    tied = tied_parameters(model)
    if tied:
        raise ConfigError(f"build_sparse cannot build a model with tied parameters ({', '.join(tied)}); "
                          "build it dense and let the engine compress it")
    plan = plan_densities(model, sparsity, distribution, **rules)
    by_module: Dict[str, List[Target]] = {}
    for t in plan.targets:
        by_module.setdefault(t.module_name, []).append(t)
    generator = torch.Generator().manual_seed(int(seed))
    built, left = [], []
    for module_name in [n for n, _ in model.named_modules()]:
        module = model.get_submodule(module_name)  # fetched in turn: a replaced layer's dense tensors are freed
        targets = by_module.get(module_name, [])
        if targets and module_name and _sparse_choice(module, module_name, targets, plan.counts, policy):
            law = entry_law(module, init)
            replace_module(model, module_name, _compressed(module, module_name, plan.counts, init_fn, law,
                                                            generator, device, policy))
            built.append(module_name)
            continue
        left += [t.name for t in targets]
        if any(t.is_meta for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))):
            _materialise(module, init_fn, device)
    log.info("build_sparse: built compressed %s; dense (masked by the engine): %s",
             ", ".join(built) or "none", ", ".join(left) or "none")
    return model
