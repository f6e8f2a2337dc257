"""Wide Residual Networks (pre-activation, CIFAR-style)."""
from __future__ import annotations

from torch import Tensor, nn

from ..data.base import DataInfo
from ..errors import ConfigError
from ..registry import MODELS
from .common import check_prob, image_shape, init_wrn, scaled


class WideBasic(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3(stride)-BN-ReLU-dropout-conv3x3, plus shortcut.

    The shortcut is the identity when shapes match, otherwise a 1x1 conv (stride) applied to the
    pre-activated input, as in Zagoruyko & Komodakis' reference code.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv2(self.dropout(self.relu(self.bn2(self.conv1(pre)))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-d-k: conv3x3(16) -> 3 groups of n=(d-4)/6 blocks (16k, 32k, 64k; strides 1, 2, 2) -> BN-ReLU-pool-fc."""

    def __init__(self, in_ch: int, num_classes: int, depth: int, widen: float, width: float, dropout: float):
        super().__init__()
        n = (depth - 4) // 6
        stem = scaled(16, width)
        self.conv1 = nn.Conv2d(in_ch, stem, 3, padding=1, bias=False)
        blocks, prev = [], stem
        for group, (base, stride) in enumerate(((16, 1), (32, 2), (64, 2))):
            out = scaled(round(base * widen), width)
            stage = [WideBasic(prev if i == 0 else out, out, stride if i == 0 else 1, dropout) for i in range(n)]
            blocks.append(nn.Sequential(*stage))
            prev = out
        self.block1, self.block2, self.block3 = blocks
        self.bn = nn.BatchNorm2d(prev)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)  # = the paper's 8x8 average pool at 32x32 inputs
        self.fc = nn.Linear(prev, num_classes)
        init_wrn(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(self.pool(self.relu(self.bn(x))).flatten(1))


def _build(info: DataInfo, width: float, depth, widen, dropout, model: str) -> WideResNet:
    c, _, _ = image_shape(info, model)
    if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ConfigError(f"model '{model}': depth must be 6n+4 with n >= 1 (e.g. 16, 22, 28), got {depth!r}")
    if not isinstance(widen, (int, float)) or widen <= 0:
        raise ConfigError(f"model '{model}': widen must be a positive number, got {widen!r}")
    p = check_prob(dropout, "dropout", model)
    return WideResNet(c, info.num_classes, depth, widen, width, p)


@MODELS.register("wrn")
def wrn(info: DataInfo, width: float = 1.0, *, depth: int = 22, widen: float = 2, dropout: float = 0.0) -> WideResNet:
    """Wide ResNet WRN-depth-widen (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

    Pre-activation basic blocks, ``depth`` = 6n + 4, group widths 16·widen, 32·widen, 64·widen;
    ``dropout`` between the block's convs (the RigL TF code used 0.3 for WRN-22-2). ``width``
    multiplies every hidden channel count (stem 16 included) for Small-Dense baselines. Dense
    WRN-22-2 has 1,079,642 parameters (10 classes) and about 3.15e8 forward FLOPs at 32x32.
    """
    return _build(info, width, depth, widen, dropout, "wrn")


def _fixed_wrn(depth: int, widen: int):
    """A registered convenience factory for WRN-``depth``-``widen``."""

    def factory(info: DataInfo, width: float = 1.0, *, dropout: float = 0.0) -> WideResNet:
        return _build(info, width, depth, widen, dropout, f"wrn-{depth}-{widen}")

    factory.__name__ = f"wrn_{depth}_{widen}"
    factory.__doc__ = (
        f"WRN-{depth}-{widen} (Zagoruyko & Komodakis, BMVC 2016): same as ``wrn`` with depth={depth}, "
        f"widen={widen}; options: dropout."
    )
    return factory


MODELS.register("wrn-22-2")(_fixed_wrn(22, 2))
MODELS.register("wrn-16-8")(_fixed_wrn(16, 8))
MODELS.register("wrn-28-10")(_fixed_wrn(28, 10))
