"""The model zoo: small CIFAR-style and ImageNet-style CNNs built from plain layers.

Every model is made only of ``nn.Conv2d``/``nn.BatchNorm2d``/``nn.ReLU``/``nn.ReLU6``/``nn.Linear``/``nn.MaxPool2d``/
``nn.AdaptiveAvgPool2d``/``nn.Identity``/``nn.Sequential`` (plus the container classes here), so the factorizer can find
every convolution by type and swap it for a ``nn.Sequential`` of smaller convolutions. Residual additions live in the
block's ``forward`` (an ONNX ``Add``), never in a custom layer. All classifiers sit behind ``AdaptiveAvgPool2d(1)`` and
``torch.flatten``, so the models accept any input size their stride allows.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from pipeline.registry import Registry

#: name -> factory(num_classes: int = 10, in_channels: int = 3) -> nn.Module
MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def init_weights(model: nn.Module, zero_init_residual: bool = False) -> None:
    """He (Kaiming) initialisation for convolutions, unit BatchNorm, small-normal classifier.

    ``zero_init_residual`` zeroes the last BN of every residual branch (Goyal et al. 2017, torchvision's option of
    that name) so each block starts as its shortcut.

    Deterministic under ``torch.manual_seed`` because it only uses torch's global generator in module order.

    Args:
        model: module whose submodules are initialised in place.
        zero_init_residual: see above; used for deep CIFAR ResNets only (see ``CifarResNet``).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            # fan_out keeps activation variance stable through ReLU stacks (He et al. 2015, as torchvision does).
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)
            elif isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)


def _conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, relu6: bool = False) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True) if relu6 else nn.ReLU(inplace=True),
    )


class _Classifier(nn.Module):
    """features -> AdaptiveAvgPool2d(1) -> flatten -> classifier (the layout every zoo model shares)."""

    features: nn.Module
    classifier: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


# ------------------------------------------------------------------------------------------------------------- tiny
class TinyNet(_Classifier):
    """Three 3x3 convs (1 -> 16 -> 32 -> 32, max-pools between, the last strided) with BN/ReLU: small enough for unit tests.

    Args:
        num_classes: classifier outputs.
        in_channels: input channels.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        # Max-pools widen the receptive field so global pooling sees whole objects (and keep tests fast).
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, 16),
            nn.MaxPool2d(2),
            _conv_bn_relu(16, 32),
            nn.MaxPool2d(2),
            _conv_bn_relu(32, 32, stride=2),
        )
        self.classifier = nn.Linear(32, num_classes)
        init_weights(self)


# ------------------------------------------------------------------------------------------------------- ResNet blocks
class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity shortcut, or a 1x1 conv + BN shortcut when shape changes (option B)."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (strided, as in torchvision's "ResNet v1.5") -> 1x1 expand (x4), with projection shortcut."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu3 = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.shortcut(x))


def _stages(block: type[BasicBlock] | type[Bottleneck], cin: int, widths: list[int], depths: list[int],
            strides: list[int]) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for width, depth, stride in zip(widths, depths, strides):
        blocks: list[nn.Module] = []
        for i in range(depth):
            blocks.append(block(cin, width, stride if i == 0 else 1))
            cin = width * block.expansion
        layers.append(nn.Sequential(*blocks))
    return nn.Sequential(*layers), cin


class CifarResNet(_Classifier):
    """CIFAR ResNet (He et al. 2016, sec. 4.2): 3x3 stem, three stages of ``n`` basic blocks, widths 16-32-64.

    Args:
        depth: 6n+2 (20, 32, 44, 56, 110).
        num_classes: classifier outputs.
        in_channels: input channels.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        body, cout = _stages(BasicBlock, 16, [16, 32, 64], [n, n, n], [1, 2, 2])
        self.features = nn.Sequential(_conv_bn_relu(in_channels, 16), *body)
        self.classifier = nn.Linear(cout, num_classes)
        # Measured on `shapes` with the default baseline budget (15 epochs, LR 0.05 at batch 32): resnet56 stays at
        # chance (11%) with plain init and reaches 87.6% with zero-init residual branches, while resnet20 reaches
        # 89.3% plain and only 79.6% zero-init. So deep CIFAR ResNets (>= 7 blocks per stage) start as identity.
        init_weights(self, zero_init_residual=depth >= 44)


class ResNet(_Classifier):
    """ResNet with either the CIFAR stem (3x3 stride 1, no max-pool) or the ImageNet stem (7x7/2 + max-pool/2).

    Args:
        block: BasicBlock (ResNet-18/34) or Bottleneck (ResNet-50+).
        depths: blocks per stage.
        num_classes: classifier outputs.
        in_channels: input channels.
        cifar_stem: use the 3x3 stride-1 stem without max-pool (for 32x32 inputs).
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths: list[int], num_classes: int = 10,
                 in_channels: int = 3, cifar_stem: bool = False) -> None:
        super().__init__()
        if cifar_stem:
            stem = [_conv_bn_relu(in_channels, 64, 3)]
        else:
            stem = [_conv_bn_relu(in_channels, 64, 7, stride=2), nn.MaxPool2d(3, stride=2, padding=1)]
        body, cout = _stages(block, 64, [64, 128, 256, 512], depths, [1, 2, 2, 2])
        self.features = nn.Sequential(*stem, *body)
        self.classifier = nn.Linear(cout, num_classes)
        init_weights(self)


# ---------------------------------------------------------------------------------------------------------------- VGG
VGG11_CFG: list[int | str] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class VGG(_Classifier):
    """CIFAR-style VGG with BatchNorm: conv3x3-BN-ReLU stacks and 2x2 max-pools, one Linear(512, classes) head.

    Args:
        cfg: channel counts, "M" for a 2x2 max-pool.
        num_classes: classifier outputs.
        in_channels: input channels.
    """

    def __init__(self, cfg: list[int | str], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.append(_conv_bn_relu(cin, int(v)))
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)
        init_weights(self)


# ------------------------------------------------------------------------------------------------------- MobileNetV2
class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (skipped for t=1) -> 3x3 depthwise -> 1x1 linear project, residual if same shape."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn_relu(cin, hidden, 1, relu6=True))
        layers += [
            _conv_bn_relu(hidden, hidden, 3, stride=stride, groups=hidden, relu6=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


def _make_divisible(v: float, divisor: int = 8) -> int:
    # Same rounding as the reference implementation so channel counts match published MobileNetV2 numbers.
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class MobileNetV2(_Classifier):
    """MobileNetV2 (Sandler et al. 2018), ImageNet layout, dropout-free classifier.

    Args:
        num_classes: classifier outputs.
        in_channels: input channels.
        width_mult: channel multiplier.
    """

    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> None:
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [_conv_bn_relu(in_channels, cin, 3, stride=2, relu6=True)]
        for t, c, n, s in self.SETTINGS:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(_conv_bn_relu(cin, last, 1, relu6=True))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last, num_classes)
        init_weights(self)


# ----------------------------------------------------------------------------------------------------------- registry
# min_input_size: the smallest square input the model can run on (vgg11 halves the map five times; the others pad
# their convolutions, so any size works).
@MODELS.register("tiny", family="test", natural_input_size=32, min_input_size=1)
def tiny(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Three-conv test network (runs on 8x8 and 32x32 inputs)."""
    return TinyNet(num_classes, in_channels)


@MODELS.register("vgg11", family="cifar", natural_input_size=32, min_input_size=32)
def vgg11(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """CIFAR-style VGG-11 with BatchNorm (the default model)."""
    return VGG(VGG11_CFG, num_classes, in_channels)


@MODELS.register("resnet20", family="cifar", natural_input_size=32, min_input_size=1)
def resnet20(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-20 (0.27 M params)."""
    return CifarResNet(20, num_classes, in_channels)


@MODELS.register("resnet56", family="cifar", natural_input_size=32, min_input_size=1)
def resnet56(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-56 (0.86 M params)."""
    return CifarResNet(56, num_classes, in_channels)


@MODELS.register("resnet18_cifar", family="cifar", natural_input_size=32, min_input_size=1)
def resnet18_cifar(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-18 with the CIFAR stem (about 0.56 GMAC at 32x32)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, cifar_stem=True)


@MODELS.register("resnet18", family="imagenet", natural_input_size=224, min_input_size=1)
def resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ImageNet-style ResNet-18."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels)


@MODELS.register("resnet50", family="imagenet", natural_input_size=224, min_input_size=1)
def resnet50(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ImageNet-style ResNet-50 (bottleneck blocks)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels)


@MODELS.register("mobilenet_v2", family="imagenet", natural_input_size=224, min_input_size=1)
def mobilenet_v2(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """MobileNetV2, width multiplier 1.0."""
    return MobileNetV2(num_classes, in_channels, 1.0)
