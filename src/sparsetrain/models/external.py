"""Models by import path: ``torchvision:NAME``, ``timm:NAME`` and ``package.module:factory``.

* ``torchvision:resnet50``: ``torchvision.models.get_model(NAME, weights=None,
  num_classes=<dataset classes>, **model.options)``; the model's own input stem is kept (three
  input channels).
* ``timm:resnet18``: ``timm.create_model(NAME, pretrained=False, num_classes=<classes>,
  in_chans=<dataset channels>, **model.options)`` (the ``timm`` extra).
* ``my.module:factory``: ``factory(**model.options)``, plus ``info`` (the dataset's
  :class:`~sparsetrain.data.base.DataInfo`) and ``num_classes`` when the factory takes
  parameters of those names and the options do not set them.

No pretrained weights are downloaded (start from another run with ``train.init_from``), and
``model.width`` stays 1: these models have no width multiplier, so Small-Dense cannot narrow them.
"""
from __future__ import annotations

import inspect

from torch import nn

from ..data.base import DataInfo
from ..errors import ConfigError, first_line
from ..registry import load_object

_DOWNLOADS = ("weights", "pretrained", "pretrained_cfg", "checkpoint_path")


def is_external(name: str) -> bool:
    return ":" in str(name)


def check_external(name: str, options: dict) -> None:
    """The checks of :func:`build_external` that need no dataset and build nothing."""
    source, _, attr = str(name).partition(":")
    asked = sorted(set(options) & set(_DOWNLOADS))
    if asked:
        raise ConfigError(f"model '{name}': option(s) {', '.join(asked)} would load pretrained weights, which "
                          "sparsetrain does not download; start from a run with train.init_from")
    if source == "torchvision":
        import torchvision

        if attr not in torchvision.models.list_models():
            raise ConfigError(f"unknown torchvision model '{attr}'; torchvision.models.list_models() names them "
                              "(e.g. resnet50, mobilenet_v2)")
    elif source == "timm":
        try:
            import timm
        except ImportError:
            raise ConfigError("model.name 'timm:...' needs timm: pip install 'sparsetrain[timm]'") from None
        if not timm.is_model(attr):
            raise ConfigError(f"unknown timm model '{attr}'; timm.list_models() names them (e.g. resnet18)")
    elif not callable(load_object(name, "model.name")):
        raise ConfigError(f"model.name '{name}' is not callable; name a class or a function returning an nn.Module")


def build_external(name: str, info: DataInfo, width: float, options: dict) -> nn.Module:
    source, _, attr = str(name).partition(":")
    if width != 1.0:
        raise ConfigError(f"model '{name}' has no width multiplier (model.width={width:g}); model.width and "
                          "Small-Dense apply to the registered models of `sparsetrain list`")
    check_external(name, options)
    if source == "torchvision":
        import torchvision

        kwargs = {"num_classes": info.num_classes, **options}
        return _checked(name, lambda: torchvision.models.get_model(attr, weights=None, **kwargs))
    if source == "timm":
        import timm

        kwargs = {"num_classes": info.num_classes, "in_chans": info.input_shape[0], **options}
        return _checked(name, lambda: timm.create_model(attr, pretrained=False, **kwargs))
    factory = load_object(name, "model.name")
    kwargs = dict(options)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    if "info" in params and "info" not in kwargs:
        kwargs["info"] = info
    if "num_classes" in params and "num_classes" not in kwargs:
        kwargs["num_classes"] = info.num_classes
    return _checked(name, lambda: factory(**kwargs))


def _checked(name: str, build) -> nn.Module:
    try:
        model = build()
    except (TypeError, ValueError) as e:  # a bad keyword argument or value in model.options
        raise ConfigError(f"model '{name}' could not be built with model.options: {first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model '{name}' returned {type(model).__name__}, not a torch.nn.Module")
    return model
