"""sparsetrain: sparse neural network training in PyTorch.

Public API::

    engine = sparsetrain.RigL(model, optimizer, sparsity=0.9, distribution="erk", total_steps=T)
    # in the loop, after loss.backward():
    if engine.after_backward():
        optimizer.step()
    engine.after_step()
"""
from .errors import CheckpointError, ConfigError, DataError, SparsetrainError, TrainingError
from .registry import DATASETS, DISTRIBUTIONS, METHODS, MODELS
from .sparsity.distributions import layer_densities, plan_densities
from .sparsity.constructors import SET, SNFS, RigL, Static
from .sparsity.engine import SparsityEngine

__version__ = "0.1.0"

__all__ = [
    "SparsityEngine", "Static", "SET", "RigL", "SNFS", "layer_densities", "plan_densities",
    "METHODS", "MODELS", "DATASETS", "DISTRIBUTIONS",
    "SparsetrainError", "ConfigError", "DataError", "CheckpointError", "TrainingError",
]
