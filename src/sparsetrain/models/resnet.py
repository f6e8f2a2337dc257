"""ResNet-18 / ResNet-50 built from torchvision's residual blocks, with a CIFAR or ImageNet stem."""
from __future__ import annotations

from typing import Sequence, Type, Union

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..data.base import DataInfo
from ..errors import ConfigError
from ..registry import MODELS
from .common import image_shape, init_cnn, is_small_input, scaled

Block = Type[Union[BasicBlock, Bottleneck]]


class ResNet(nn.Module):
    """torchvision's ResNet layout (same module names, blocks and init) with every width scalable.

    torchvision's ``ResNet`` hard-codes 64/128/256/512 planes (``width_per_group`` only reaches the
    bottleneck's inner 3x3, and BasicBlock rejects it), so the trunk is assembled here from
    torchvision's ``BasicBlock``/``Bottleneck``. At ``width=1`` with the ImageNet stem the
    ``state_dict`` matches ``torchvision.models.resnet18/50(weights=None)`` key for key, so torchvision
    checkpoints load. The CIFAR stem is a 3x3 stride-1 conv with ``maxpool = Identity``.
    """

    def __init__(self, block: Block, layers: Sequence[int], in_ch: int, num_classes: int,
                 width: float, small_input: bool, zero_init_residual: bool = False):
        super().__init__()
        self.inplanes = scaled(64, width)
        if small_input:
            self.conv1 = nn.Conv2d(in_ch, self.inplanes, 3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_ch, self.inplanes, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(3, stride=2, padding=1)
        planes = [scaled(p, width) for p in (64, 128, 256, 512)]
        self.layer1 = self._make_layer(block, planes[0], layers[0], 1)
        self.layer2 = self._make_layer(block, planes[1], layers[1], 2)
        self.layer3 = self._make_layer(block, planes[2], layers[2], 2)
        self.layer4 = self._make_layer(block, planes[3], layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.inplanes, num_classes)
        init_cnn(self)
        if zero_init_residual:  # Goyal et al. 2017: each residual branch starts as zero
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_((m.bn3 if isinstance(m, Bottleneck) else m.bn2).weight)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, out, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(out))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = out
        layers += [block(out, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def _build(info: DataInfo, width: float, block: Block, layers, variant: str, zero_init_residual, model: str):
    c, _, _ = image_shape(info, model)
    if not isinstance(zero_init_residual, bool):
        raise ConfigError(f"model '{model}': zero_init_residual must be true or false, got {zero_init_residual!r}")
    small = is_small_input(info, variant, model)
    return ResNet(block, layers, c, info.num_classes, width, small, zero_init_residual)


@MODELS.register("resnet18")
def resnet18(info: DataInfo, width: float = 1.0, *, variant: str = "auto",
             zero_init_residual: bool = False) -> ResNet:
    """ResNet-18 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

    ``variant``: "cifar" (3x3 stride-1 stem, no max-pool), "imagenet" (7x7 stride-2 stem + max-pool)
    or "auto" (CIFAR stem when the input side is <= 64). ``width`` scales the stem and all planes.
    """
    return _build(info, width, BasicBlock, (2, 2, 2, 2), variant, zero_init_residual, "resnet18")


@MODELS.register("resnet50")
def resnet50(info: DataInfo, width: float = 1.0, *, variant: str = "auto",
             zero_init_residual: bool = False) -> ResNet:
    """ResNet-50 (He et al., CVPR 2016), bottleneck v1.5 as in torchvision (stride on the 3x3 conv).

    The RigL paper's main ImageNet model (Evci et al., ICML 2020). Options as for ``resnet18``;
    ``width`` scales every bottleneck's planes (so also the 4x expanded outputs).
    """
    return _build(info, width, Bottleneck, (3, 4, 6, 3), variant, zero_init_residual, "resnet50")
