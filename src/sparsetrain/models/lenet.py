"""LeNet-5 style convolutional network."""
from __future__ import annotations

from torch import Tensor, nn

from ..data.base import DataInfo
from ..errors import ConfigError
from ..registry import MODELS
from .common import image_shape, init_cnn, scaled


def _conv_pool_size(size: int, pad: int) -> int:
    """Spatial size after a 5x5 conv with padding ``pad`` and a 2x2 max-pool (floor)."""
    return (size + 2 * pad - 4) // 2


class LeNet5(nn.Module):
    """conv 6@5x5 -> ReLU -> maxpool 2 -> conv 16@5x5 -> ReLU -> maxpool 2 -> fc 120 -> fc 84 -> fc classes.

    ``pads`` are the two convs' paddings; ``side`` is the (H, W) after the second pool.
    """

    def __init__(self, channels: int, num_classes: int, widths, pads, side):
        super().__init__()
        c1, c2, f1, f2 = widths
        self.features = nn.Sequential(
            nn.Conv2d(channels, c1, 5, padding=pads[0]), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=pads[1]), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(c2 * side[0] * side[1], f1), nn.ReLU(inplace=True),
            nn.Linear(f1, f2), nn.ReLU(inplace=True),
            nn.Linear(f2, num_classes),
        )
        init_cnn(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


def _pads_and_side(h: int, w: int):
    """Paddings that let any input >= 8x8 through: classic LeNet pads 28x28 MNIST to 32x32 (pad 2).

    First conv: pad 2 below 32 pixels (as LeCun et al. padded MNIST), else none. Second conv: pad 2
    ("same") when its input is smaller than 10, so at least a 2x2 map reaches the second pool.
    """
    pad1 = 2 if min(h, w) < 32 else 0
    mid = (_conv_pool_size(h, pad1), _conv_pool_size(w, pad1))
    pad2 = 2 if min(mid) < 10 else 0
    side = (_conv_pool_size(mid[0], pad2), _conv_pool_size(mid[1], pad2))
    return (pad1, pad2), side


@MODELS.register("lenet5")
def lenet5(info: DataInfo, width: float = 1.0) -> LeNet5:
    """LeNet-5 (LeCun et al., "Gradient-based learning applied to document recognition", Proc. IEEE 1998).

    Modern variant: ReLU and max-pooling. Channels come from ``input_shape``; 28x28 inputs are
    zero-padded in the first conv (as in the paper), 32x32 are not. ``width`` scales 6, 16, 120, 84.
    """
    c, h, w = image_shape(info, "lenet5")
    pads, side = _pads_and_side(h, w)
    if min(side) < 1:
        raise ConfigError(f"model 'lenet5' needs inputs of at least 8x8 pixels, got {h}x{w}; use 'mlp'")
    widths = [scaled(n, width) for n in (6, 16, 120, 84)]
    return LeNet5(c, info.num_classes, widths, pads, side)
