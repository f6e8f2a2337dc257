"""One small name -> object registry, used for methods, models, datasets and distributions."""
from __future__ import annotations

import importlib
from typing import Callable, Dict, Iterator, TypeVar

from .errors import ConfigError, first_line

T = TypeVar("T")


class Registry:
    """Maps names to objects; unknown names raise :class:`ConfigError` listing the valid ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, object] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (default: its ``__name__`` lower-cased)."""

        def wrap(obj: T) -> T:
            key = (name or obj.__name__).lower()
            if key in self._items:
                raise ValueError(f"{self.kind} '{key}' registered twice")
            self._items[key] = obj
            return obj

        return wrap

    def get(self, name: str):
        key = str(name).lower()
        if key not in self._items:
            raise ConfigError(
                f"unknown {self.kind} '{name}'; choose one of: {', '.join(self.names())}"
            )
        return self._items[key]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return str(name).lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


METHODS = Registry("method")
MODELS = Registry("model")
DATASETS = Registry("dataset")
DISTRIBUTIONS = Registry("distribution")


def load_object(spec: str, what: str):
    """The object that ``spec`` (``"package.module:Name"``, the name possibly dotted) names; a
    ConfigError naming ``what`` and the fix when the module or the name is not found."""
    module, sep, attr = str(spec).partition(":")
    if not sep or not module.strip() or not attr.strip():
        raise ConfigError(f"{what} '{spec}' must look like 'package.module:Name'")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"{what} '{spec}': cannot import '{module}' ({first_line(e)}); install it or put "
                          "it on PYTHONPATH") from None
    except Exception as e:  # the user's module failed while importing
        raise ConfigError(f"{what} '{spec}': importing '{module}' failed: {type(e).__name__}: {first_line(e)}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{what} '{spec}': '{module}' has no '{attr}'")
        obj = getattr(obj, part)
    return obj
