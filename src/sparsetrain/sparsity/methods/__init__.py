"""Sparse-training methods; importing this package registers them all.

Every module of the package is imported (a new method is one new file here, no list to keep);
importing a module runs its ``@METHODS.register`` decorator.
"""
import importlib
import pkgutil

from .base import DynamicMethod, Method  # noqa: F401

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
