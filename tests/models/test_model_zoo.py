"""Every zoo model builds, runs forward at its natural size and uses only swappable plain layers."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.errors import ConfigError
from pipeline.models import MODELS, build_model, model_names
from pipeline.models.zoo import BasicBlock, Bottleneck, InvertedResidual, _Classifier

# ImageNet-style models run at 64x64 here to keep the test fast; CIFAR-style at their natural 32x32.
SIZES = {"tiny": 32, "resnet20": 32, "resnet56": 32, "resnet18_cifar": 32, "vgg11": 32, "resnet18": 64,
         "resnet50": 64, "mobilenet_v2": 64}
ALLOWED = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Linear, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Identity,
           nn.Sequential, BasicBlock, Bottleneck, InvertedResidual, _Classifier)


def test_zoo_names_complete() -> None:
    assert set(model_names()) == set(SIZES)
    assert model_names() == MODELS.names()


@pytest.mark.parametrize("name", sorted(SIZES))
def test_forward_shape_and_layers(name: str) -> None:
    torch.manual_seed(0)
    s = SIZES[name]
    model = build_model(name, num_classes=7, in_channels=3, input_size=s).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, s, s))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    for mod in model.modules():
        assert isinstance(mod, ALLOWED), f"{name}: {type(mod).__name__} is not a plain layer"
    # The classifier is a plain Linear fed by global average pooling.
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 7
    assert isinstance(model.pool, nn.AdaptiveAvgPool2d)


@pytest.mark.parametrize("size", [8, 32])
def test_tiny_small_inputs_and_one_channel(size: int) -> None:
    model = build_model("tiny", num_classes=10, in_channels=1, input_size=size).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, size, size)).shape == (2, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3
    assert any(c.in_channels >= 32 and c.out_channels >= 32 for c in convs)


def test_deterministic_under_seed() -> None:
    torch.manual_seed(3)
    a = build_model("resnet20", 10, 3, 32).state_dict()
    torch.manual_seed(3)
    b = build_model("resnet20", 10, 3, 32).state_dict()
    torch.manual_seed(4)
    c = build_model("resnet20", 10, 3, 32).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["features.0.0.weight"], c["features.0.0.weight"])


def _macs(model: nn.Module, size: int) -> int:
    total = 0

    def hook(mod: nn.Module, inp: tuple[torch.Tensor], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            total += out.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, nn.Linear):
            total += mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, size, size))
    for h in handles:
        h.remove()
    return total


def test_published_sizes() -> None:
    """Parameter and MAC counts match the published architectures (catches wrong widths/strides)."""
    r20 = build_model("resnet20", 10, 3, 32)
    assert 0.26e6 < sum(p.numel() for p in r20.parameters()) < 0.28e6
    r56 = build_model("resnet56", 10, 3, 32)
    assert 0.84e6 < sum(p.numel() for p in r56.parameters()) < 0.87e6
    r18c = build_model("resnet18_cifar", 10, 3, 32)
    assert 0.54e9 < _macs(r18c, 32) < 0.57e9
    vgg = build_model("vgg11", 10, 3, 32)
    assert vgg.classifier.in_features == 512
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg.modules()) == 5
    mnv2 = build_model("mobilenet_v2", 1000, 3, 224)
    assert 3.4e6 < sum(p.numel() for p in mnv2.parameters()) < 3.6e6  # 3.5 M with the 1000-class head
    r50 = build_model("resnet50", 1000, 3, 224)
    assert 25.4e6 < sum(p.numel() for p in r50.parameters()) < 25.7e6


def test_vgg_rejects_too_small_input() -> None:
    with pytest.raises(ConfigError, match="at least 32x32"):
        build_model("vgg11", 10, 3, 16)


def test_unknown_name_lists_known() -> None:
    with pytest.raises(ConfigError) as e:
        build_model("resnet999", 10, 3, 32)
    for name in SIZES:
        assert name in str(e.value)


def test_bad_class_count() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("tiny", 0, 3, 32)
