"""Sparse-training methods; importing this package registers them all."""
from . import dense, rigl, set, snfs, static  # noqa: F401
from . import edge_popup, gem_miner, gmp, grasp, imp, small_dense, snip, synflow  # noqa: F401
from .base import DynamicMethod, Method  # noqa: F401
