"""MobileNet v1 (own implementation) and MobileNet v2 (torchvision), each with a CIFAR-friendly variant."""
from __future__ import annotations

import torchvision
from torch import Tensor, nn

from ..data.base import DataInfo
from ..errors import ConfigError
from ..registry import MODELS
from .common import check_prob, image_shape, init_cnn, is_small_input, scaled

# (output channels, stride) of the 13 depthwise-separable blocks, Table 1 of Howard et al. 2017.
_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
              (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))

# torchvision's default [expansion t, channels c, repeats n, stride s]; the CIFAR variant sets the
# second stage's stride to 1 (and the stem's), so a 32x32 input ends at 4x4 instead of 1x1.
_V2_SETTING = ([1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
               [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1])


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class MobileNetV1(nn.Module):
    """Stem conv3x3 -> 13 x (depthwise 3x3 -> BN-ReLU -> pointwise 1x1 -> BN-ReLU) -> pool -> fc."""

    def __init__(self, in_ch: int, num_classes: int, width: float, small_input: bool):
        super().__init__()
        prev = scaled(32, width)
        layers = [_conv_bn_relu(in_ch, prev, 3, 1 if small_input else 2)]
        for channels, stride in _V1_BLOCKS:
            out = scaled(channels, width)
            layers.append(nn.Sequential(_conv_bn_relu(prev, prev, 3, stride, groups=prev),
                                        _conv_bn_relu(prev, out, 1, 1)))
            prev = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(prev, num_classes)
        init_cnn(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.avgpool(self.features(x)).flatten(1))


@MODELS.register("mobilenet_v1")
def mobilenet_v1(info: DataInfo, width: float = 1.0, *, variant: str = "auto") -> MobileNetV1:
    """MobileNet v1 (Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile
    Vision Applications", arXiv:1704.04861, 2017).

    ``width`` is the paper's width multiplier alpha (here rounded to whole channels, no multiple-of-8
    rounding). ``variant`` "cifar" uses a stride-1 stem; "auto" picks it for inputs <= 64 pixels.
    The RigL paper keeps the first layer and all depthwise convs dense for MobileNets.
    """
    c, _, _ = image_shape(info, "mobilenet_v1")
    return MobileNetV1(c, info.num_classes, width, is_small_input(info, variant, "mobilenet_v1"))


def _replace_stem(model: nn.Module, in_ch: int, stride: int) -> None:
    """Swap torchvision's 3-channel stride-2 stem conv for one with ``in_ch`` inputs and ``stride``."""
    old = model.features[0][0]
    new = nn.Conv2d(in_ch, old.out_channels, 3, stride=stride, padding=1, bias=False)
    nn.init.kaiming_normal_(new.weight, mode="fan_out")  # torchvision's init for this model
    model.features[0][0] = new


@MODELS.register("mobilenet_v2")
def mobilenet_v2(info: DataInfo, width: float = 1.0, *, variant: str = "auto", dropout: float = 0.2,
                 round_nearest: int = 1) -> nn.Module:
    """MobileNet v2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018).

    Built by ``torchvision.models.mobilenet_v2(weights=None, width_mult=width)``. The CIFAR variant
    ("auto" for inputs <= 64 pixels) uses stride 1 in the stem and in the second stage. Channel
    counts are rounded to multiples of ``round_nearest`` (torchvision/paper use 8; default 1 so the
    width multiplier is fine-grained for Small-Dense matching; at width 1 both agree). As in the paper
    and torchvision, the final 1x1 conv keeps 1280 channels for widths below 1.
    """
    c, _, _ = image_shape(info, "mobilenet_v2")
    if not isinstance(round_nearest, int) or round_nearest < 1:
        raise ConfigError(f"model 'mobilenet_v2': round_nearest must be a positive integer, got {round_nearest!r}")
    small = is_small_input(info, variant, "mobilenet_v2")
    setting = [list(row) for row in _V2_SETTING]
    if small:
        setting[1][3] = 1
    model = torchvision.models.mobilenet_v2(
        weights=None, num_classes=info.num_classes, width_mult=width, round_nearest=round_nearest,
        inverted_residual_setting=setting, dropout=check_prob(dropout, "dropout", "mobilenet_v2"))
    if small or c != 3:
        _replace_stem(model, c, 1 if small else 2)
    return model
