"""VGG-16 with batch normalisation: CIFAR head for small inputs, torchvision's ImageNet head otherwise."""
from __future__ import annotations

from torch import Tensor, nn

from ..data.base import DataInfo
from ..registry import MODELS
from .common import check_prob, image_shape, init_vgg, is_small_input, scaled

# Configuration "D" of Simonyan & Zisserman (13 convs); "M" is a 2x2 max-pool.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _features(in_ch: int, width: float) -> nn.Sequential:
    """conv3x3-BN-ReLU stack; module indices match torchvision's ``vgg16_bn().features``."""
    layers: list[nn.Module] = []
    prev = in_ch
    for item in _VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        out = scaled(item, width)
        layers += [nn.Conv2d(prev, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        prev = out
    return nn.Sequential(*layers)


def _classifier(in_features: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Linear-ReLU-Dropout x 2 then the readout, torchvision's VGG head shape."""
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(hidden, num_classes))


class VGG(nn.Module):
    """``features`` -> ``avgpool`` -> flatten -> ``classifier`` (attribute names as torchvision's VGG).

    CIFAR: global average pool, classifier 512 -> 512 -> 512 -> classes. ImageNet: 7x7 adaptive pool,
    classifier 25088 -> 4096 -> 4096 -> classes; at width 1 its state_dict matches
    ``torchvision.models.vgg16_bn(weights=None)``.
    """

    def __init__(self, in_ch: int, num_classes: int, width: float, small_input: bool, dropout: float):
        super().__init__()
        self.features = _features(in_ch, width)
        side, hidden = (1, 512) if small_input else (7, 4096)
        self.avgpool = nn.AdaptiveAvgPool2d(side)
        self.classifier = _classifier(scaled(512, width) * side * side, scaled(hidden, width), num_classes, dropout)
        init_vgg(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


@MODELS.register("vgg16")
def vgg16(info: DataInfo, width: float = 1.0, *, variant: str = "auto", dropout: float = 0.5) -> VGG:
    """VGG-16 with BatchNorm (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale
    Image Recognition", ICLR 2015; BN from Ioffe & Szegedy 2015).

    ``variant`` "cifar" (or "auto" with inputs <= 64 pixels) uses a small 512-wide classifier after a
    global average pool; "imagenet" uses torchvision's 4096-wide head. ``width`` scales all hidden
    channels and units; ``dropout`` is the classifier's dropout probability.
    """
    c, _, _ = image_shape(info, "vgg16")
    small = is_small_input(info, variant, "vgg16")
    return VGG(c, info.num_classes, width, small, check_prob(dropout, "dropout", "vgg16"))
