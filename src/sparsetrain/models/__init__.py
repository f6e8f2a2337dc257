"""Model zoo: every family module registers its factories in :data:`sparsetrain.registry.MODELS`.

A factory has the signature ``factory(info: DataInfo, width: float = 1.0, **options) -> nn.Module``;
``width`` multiplies every hidden channel/unit count (rounded, at least 1) while input and output
sizes follow ``info``. Use :func:`build_model` rather than calling factories directly: it validates
the name, the width and the option names.
"""
from __future__ import annotations

import inspect
import logging
import math

import torch
from torch import nn

from ..data.base import DataInfo
from ..errors import ConfigError
from ..registry import MODELS
from . import lenet, mlp, mobilenet, resnet, rnn, vgg, wrn  # noqa: F401  (registration side effect)
from .common import check_width
from .external import build_external, check_external, is_external

__all__ = ["build_model", "check_model", "count_parameters", "init_rule", "small_dense_width", "model_options",
           "MODELS"]

log = logging.getLogger(__name__)

#: Width search range of :func:`small_dense_width`: at the low end every hidden size is ~1.
_MIN_WIDTH, _MAX_WIDTH = 1e-3, 64.0


def model_options(name: str) -> dict:
    """Option names of model ``name`` mapped to their defaults (``width`` excluded)."""
    params = list(inspect.signature(MODELS.get(name)).parameters.values())[2:]
    return {p.name: p.default for p in params if p.kind is not p.VAR_KEYWORD}


def check_model(name: str, options: dict) -> None:
    """The name and option checks of :func:`build_model`, without a dataset and building nothing."""
    if is_external(name):
        check_external(name, options)
        return
    MODELS.get(name)
    unknown = sorted(set(options) - set(model_options(name)))
    if unknown:
        valid = ", ".join(model_options(name)) or "none"
        raise ConfigError(f"model '{name}' has no option(s) {', '.join(unknown)}; valid options: {valid}")


def build_model(name: str, info: DataInfo, width: float = 1.0, **options) -> nn.Module:
    """Build registered model ``name`` for dataset ``info`` with width multiplier ``width``.

    ``name`` may also be an import path (:mod:`.external`: ``torchvision:resnet50``,
    ``timm:resnet18``, ``my.module:factory``), built with ``options`` as keyword arguments.

    Raises ConfigError for an unknown name, a non-positive width, an option the model does not
    have, or a bad option value.
    """
    if is_external(name):  # "torchvision:resnet50", "timm:resnet18", "my.module:factory"
        return build_external(name, info, check_width(width), options)
    check_model(name, options)
    return MODELS.get(name)(info, check_width(width), **options)


#: the init rule of each registered model, for building it module by module (``build_sparse``):
#: "default" (each module's ``reset_parameters``) or a family rule of ``common.FAMILY_INITS``
#: applied after it; a model not listed (mobilenet_v2: torchvision's own init) cannot be built so
_INIT_RULES = {"mlp": "default", "lenet300": "default", "lstm_lm": "default", "gru_lm": "default",
               "lenet5": "cnn", "mobilenet_v1": "cnn", "resnet18": "cnn", "resnet50": "cnn",
               "wrn": "wrn", "wrn-22-2": "wrn", "wrn-16-8": "wrn", "wrn-28-10": "wrn", "vgg16": "vgg"}


def init_rule(name: str, options: dict) -> tuple:
    """(rule, None) naming how model ``name`` initialises one module, or (None, why not) when it
    cannot be built module by module (an external model, an option that changes the init)."""
    if is_external(name):
        return None, f"the init of external model '{name}' is not known module by module"
    if options.get("zero_init_residual"):
        return None, "zero_init_residual changes the init of whole residual blocks"
    rule = _INIT_RULES.get(str(name).lower())
    return (rule, None) if rule else (None, f"model '{name}' has no module-by-module init rule")


def count_parameters(model: nn.Module) -> int:
    """Total number of parameters (shared/tied parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def _count_at(name: str, info: DataInfo, width: float, options: dict) -> int:
    """Parameter count at ``width``, built on the meta device so no memory is allocated."""
    with torch.device("meta"):
        return count_parameters(build_model(name, info, width, **options))


def small_dense_width(name: str, info: DataInfo, target_params: float, **options) -> float:
    """Width multiplier whose total parameter count is closest to ``target_params``.

    The Small-Dense baseline of Evci et al. (ICML 2020): a dense model with fewer channels and about
    as many parameters as a sparse model has nonzeros. The count is a non-decreasing step function
    of the width, so a bisection (on log width) brackets the step that crosses the target; the
    closer of the two bracket ends is returned.
    """
    count = lambda w: _count_at(name, info, w, options)  # noqa: E731
    lo, hi = _MIN_WIDTH, 1.0
    if count(lo) > target_params:
        raise ConfigError(f"model '{name}' cannot be made as small as {target_params:g} parameters "
                          f"(minimum {count(lo)}); lower the sparsity or pick a smaller model")
    while count(hi) < target_params:
        if hi >= _MAX_WIDTH:
            raise ConfigError(f"model '{name}' needs width > {_MAX_WIDTH:g} for {target_params:g} parameters")
        lo, hi = hi, hi * 2
    for _ in range(60):  # invariant: count(lo) < target <= count(hi)
        if hi / lo < 1 + 1e-7:  # finer than any channel-rounding step that matters
            break
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if count(mid) < target_params else (lo, mid)
    best = min((lo, hi), key=lambda w: abs(count(w) - target_params))
    log.debug("small_dense_width(%s): width %.6g gives %d params for target %g", name, best, count(best), target_params)
    return best
