"""``sparsetrain list``: the registered methods, models, datasets and distributions."""
from __future__ import annotations

import argparse

from ..config import default_distribution
from .. import data as _data, models as _models  # noqa: F401  (importing them registers datasets and models)
from ..registry import DATASETS, DISTRIBUTIONS, METHODS, MODELS
from ..sparsity import methods as _methods  # noqa: F401  (registers the built-in methods)

NAME = "list"
REGISTRIES = (("methods", METHODS), ("models", MODELS), ("datasets", DATASETS), ("distributions", DISTRIBUTIONS))


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``list`` (no options)."""
    return sub.add_parser(NAME, help="show registered methods, models, datasets, distributions")


def run(args) -> int:
    """One line per registry: ``title: name, name, ...``; then each method's default layer
    distribution (its source paper's, used when ``sparsity.distribution`` is not given)."""
    for title, reg in REGISTRIES:
        print(f"{title}: {', '.join(reg.names())}")
    print("default distribution per method: " + ", ".join(f"{m}={default_distribution(m)}" for m in METHODS.names()))
    return 0
