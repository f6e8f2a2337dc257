"""Datasets: registry entries and the helpers the rest of sparsetrain uses.

Every dataset is an object in :data:`sparsetrain.registry.DATASETS` with two methods:

- ``info(**options) -> DataInfo``: shapes and class count, without touching any data;
- ``load(root, *, download=False, val_size=0, augment=True, seed=0, **options) -> Splits``.

Registered: ``digits`` (embedded, the quick-start default), ``mnist``, ``fashion_mnist``, ``cifar10``,
``cifar100``, ``imagenet``, ``ptb``, ``ptb_char``, ``wikitext2``, ``wikitext103``. Names are matched
ignoring case, ``-`` and ``_`` ("Fashion-MNIST", "wikitext-2" work). Data is looked for under
:func:`default_data_root`.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Optional

from ..errors import ConfigError
from ..registry import DATASETS
from . import cifar, digits, imagenet, mnist, text  # noqa: F401  (registers the datasets)
from .base import DataInfo, Splits
from .common import ENV_VAR, PathLike, default_data_root

__all__ = [
    "DataInfo", "Splits", "ENV_VAR", "canonical_name", "dataset_info", "default_data_root",
    "get_dataset", "load_dataset",
]

STANDARD_LOAD_ARGS = ("root", "download", "val_size", "augment", "seed")


def _squash(name: str) -> str:
    return str(name).lower().replace("-", "").replace("_", "").replace(" ", "")


def canonical_name(name: str) -> str:
    """The registered name for ``name``, ignoring case, '-' and '_'; ConfigError lists the valid ones."""
    for registered in DATASETS:
        if _squash(registered) == _squash(name):
            return registered
    DATASETS.get(name)  # raises ConfigError naming the choices
    return str(name).lower()  # pragma: no cover  (get() raised)


def get_dataset(name: str):
    """The registry object (with ``info`` and ``load``) for dataset ``name``."""
    return DATASETS.get(canonical_name(name))


def _check_options(fn: Callable, options: Dict[str, Any], name: str, reserved=()) -> None:
    """Unknown dataset options are a ConfigError listing the ones ``fn`` accepts."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    valid = [p for p in params if p not in reserved and p != "self"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"dataset '{name}' has no option(s) {', '.join(unknown)}; "
                          f"valid options: {', '.join(valid) or 'none'}")


def dataset_info(name: str, **options: Any) -> DataInfo:
    """Input shape, class count and task of dataset ``name`` without loading it."""
    spec = get_dataset(name)
    _check_options(spec.info, options, canonical_name(name))
    return spec.info(**options)


def load_dataset(
    name: str,
    root: Optional[PathLike] = None,
    *,
    download: bool = False,
    val_size: int = 0,
    augment: bool = True,
    seed: int = 0,
    **options: Any,
) -> Splits:
    """Load dataset ``name`` from ``root`` (resolved by :func:`default_data_root`).

    ``val_size`` examples are carved from train with a permutation seeded by ``seed`` (never
    augmented); ``augment`` switches the dataset's training augmentation; ``download`` lets the
    loader fetch missing files where that is possible. Missing files raise :class:`DataError`.
    """
    spec = get_dataset(name)
    _check_options(spec.load, options, canonical_name(name), reserved=STANDARD_LOAD_ARGS)
    return spec.load(str(default_data_root(root)), download=download, val_size=val_size,
                     augment=augment, seed=seed, **options)
