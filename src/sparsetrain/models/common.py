"""Small helpers shared by the model families: width scaling, input checks, standard init."""
from __future__ import annotations

import math
import numbers
from typing import Sequence, Tuple

from torch import nn

from ..data.base import DataInfo
from ..errors import ConfigError

#: Inputs whose larger spatial side is at most this use the CIFAR-style stem/head ("auto" variant).
SMALL_INPUT_MAX = 64
VARIANTS = ("auto", "cifar", "imagenet")


def scaled(channels: int, width: float) -> int:
    """Hidden size ``channels`` times the width multiplier, rounded half up, at least 1."""
    return max(1, int(math.floor(channels * width + 0.5)))


def check_width(width: float) -> float:
    """Return ``width`` as a float, or raise ConfigError if it is not a finite positive number."""
    try:
        value = float(width)
    except (TypeError, ValueError):
        raise ConfigError(f"model width must be a positive number, got {width!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"model width must be a positive number, got {width!r}")
    return value


def check_task(info: DataInfo, task: str, model: str) -> None:
    """Raise ConfigError unless the dataset's task matches what ``model`` does."""
    if info.task != task:
        raise ConfigError(
            f"model '{model}' is for task '{task}' but dataset '{info.name}' has task '{info.task}'; "
            "pick a model that matches the dataset"
        )


def image_shape(info: DataInfo, model: str) -> Tuple[int, int, int]:
    """(C, H, W) of an image dataset; ConfigError for feature vectors or token sequences."""
    check_task(info, "classification", model)
    shape = tuple(int(s) for s in info.input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(
            f"model '{model}' needs image inputs of shape (C, H, W) but dataset '{info.name}' gives "
            f"{shape}; use 'mlp' for flat feature vectors"
        )
    return shape  # type: ignore[return-value]


def is_small_input(info: DataInfo, variant: str, model: str) -> bool:
    """Whether to build the CIFAR-style variant: ``variant`` "cifar"/"imagenet", or "auto" by input size."""
    if variant not in VARIANTS:
        raise ConfigError(f"model '{model}': variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if variant == "auto":
        return max(info.input_shape[-2:]) <= SMALL_INPUT_MAX
    return variant == "cifar"


def positive_ints(values, option: str, model: str) -> Tuple[int, ...]:
    """Validate an int or a sequence of ints >= 1 given as option ``option``; returns a tuple."""
    seq = (values,) if isinstance(values, numbers.Integral) else values
    if isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence):
        seq = (None,)
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in seq):
        raise ConfigError(f"model '{model}': option {option} must be positive integers, got {values!r}")
    return tuple(int(v) for v in seq)


def check_prob(p: float, option: str, model: str) -> float:
    """Validate a dropout probability in [0, 1)."""
    try:
        value = float(p)
    except (TypeError, ValueError):
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"model '{model}': option {option} must be in [0, 1), got {p!r}")
    return value


def init_cnn(module: nn.Module) -> None:
    """torchvision's ResNet init: Kaiming-normal (fan_out, ReLU) convs, unit/zero norm affine, zero biases.

    He et al., "Delving Deep into Rectifiers", ICCV 2015. Linear layers keep PyTorch's default init.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_wrn(module: nn.Module) -> None:
    """WRN's init: :func:`init_cnn`, and zero biases of the linear classifier."""
    init_cnn(module)
    for m in module.modules():
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def init_vgg(module: nn.Module) -> None:
    """torchvision's VGG init: :func:`init_cnn`, and linear layers ~ N(0, 0.01) with zero biases."""
    init_cnn(module)
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


#: the init a family applies to the whole model after construction (each module's own
#: ``reset_parameters`` first); ``sparsity.storage.build_sparse`` applies it module by module
FAMILY_INITS = {"cnn": init_cnn, "wrn": init_wrn, "vgg": init_vgg}
