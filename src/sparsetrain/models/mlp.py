"""Fully connected classifiers on flattened inputs: a configurable MLP and LeNet-300-100."""
from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor, nn

from ..data.base import DataInfo
from ..registry import MODELS
from .common import check_task, positive_ints, scaled


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU] * len(hidden) -> Linear to ``num_classes``.

    Layers live in ``self.layers`` (an ``nn.Sequential``) so their names are stable
    (``layers.0``, ``layers.2``, ...) for sparsity distributions that address layers by name.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int):
        super().__init__()
        modules: list[nn.Module] = []
        prev = in_features
        for size in hidden:
            modules += [nn.Linear(prev, size), nn.ReLU(inplace=True)]
            prev = size
        modules.append(nn.Linear(prev, num_classes))
        self.layers = nn.Sequential(*modules)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x.flatten(1))


def _flat_mlp(info: DataInfo, width: float, hidden, model: str) -> MLP:
    check_task(info, "classification", model)
    sizes = positive_ints(hidden, "hidden", model)
    in_features = math.prod(int(s) for s in info.input_shape)
    return MLP(in_features, [scaled(h, width) for h in sizes], info.num_classes)


@MODELS.register("mlp")
def mlp(info: DataInfo, width: float = 1.0, *, hidden: Sequence[int] = (300, 100)) -> MLP:
    """Multi-layer perceptron with ReLU on the flattened input (any ``input_shape``: images or features).

    ``hidden`` lists the hidden layer sizes (``()`` gives a linear classifier); ``width`` scales each.
    The default (300, 100) is LeNet-300-100 (LeCun et al., "Gradient-based learning applied to
    document recognition", Proc. IEEE 1998), the MLP of the RigL paper's MNIST experiments
    (Evci et al., "Rigging the Lottery", ICML 2020).
    """
    return _flat_mlp(info, width, hidden, "mlp")


@MODELS.register("lenet300")
def lenet300(info: DataInfo, width: float = 1.0) -> MLP:
    """LeNet-300-100 (LeCun et al., Proc. IEEE 1998): 784-300-100-10 on MNIST, ReLU activations.

    Works for any ``input_shape`` by flattening it (e.g. scikit-learn digits: 64-300-100-10).
    """
    return _flat_mlp(info, width, (300, 100), "lenet300")
