"""Encoder architectures, built from a small JSON-serialisable config.

A saved ``config.json`` (``EncoderConfig.to_dict()``) rebuilds the exact module, so that
``model.safetensors`` loads into it with ``strict=True``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet, conv1x1


class CifarResNet(nn.Module):
    """ResNet with the CIFAR stem (3x3 conv1, stride 1, no max-pool) and no classifier.

    Hand-written because torchvision's ResNet fixes the stage widths at 64-512, and the CPU
    presets need a width-reduced one; at ``width=64`` its parameter names and shapes equal
    torchvision's ``resnet18`` with the seed's stem and ``fc = Identity``.
    """

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), width: int = 64) -> None:
        super().__init__()
        self.feature_dim = width * 2 ** (len(layers) - 1)
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        in_planes = width
        for i, blocks in enumerate(layers):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            downsample = None
            if stride != 1 or in_planes != planes:
                downsample = nn.Sequential(conv1x1(in_planes, planes, stride), nn.BatchNorm2d(planes))
            stage = [BasicBlock(in_planes, planes, stride, downsample)]
            stage += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            in_planes = planes
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        # torchvision's ResNet initialisation, except conv1: the seed swaps in a new nn.Conv2d after
        # building resnet18, so its conv1 keeps PyTorch's default init (kaiming_uniform, a=sqrt(5)).
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m is not self.conv1:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map ``(N, feature_dim, h, w)``, before pooling."""
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled features ``(N, feature_dim)``."""
        return torch.flatten(self.avgpool(self.forward_features(x)), 1)


def resnet18_cifar(width: int = 64) -> CifarResNet:
    """ResNet-18 with the CIFAR stem; ``8 * width``-d features (512 at the default width)."""
    return CifarResNet((2, 2, 2, 2), width)


class ImageNetResNet18(ResNet):
    """torchvision's ResNet-18 (ImageNet stem) with ``fc = Identity``: the seed's random-init baseline."""

    feature_dim = 512

    def __init__(self) -> None:
        super().__init__(BasicBlock, [2, 2, 2, 2])
        self.fc = nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map ``(N, 512, h, w)``, before pooling."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def resnet18_imagenet() -> ImageNetResNet18:
    """torchvision's ResNet-18 (ImageNet stem, random init) with ``fc = Identity``."""
    return ImageNetResNet18()


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "resnet18_cifar": resnet18_cifar,
    "resnet18_imagenet": resnet18_imagenet,
}


MIN_INPUT_SIZE, MAX_INPUT_SIZE = 8, 1024


MIN_STD = 1e-3  # normalisation std below this: pixels in [0, 1] become ~1e3 or more, and 1e-300 makes them inf


@dataclass(frozen=True)
class EncoderConfig:
    """What rebuilds an encoder: architecture name and kwargs, plus its preprocessing.

    ``mean``/``std`` of ``None`` means ToTensor only (pixels in [0, 1]), as in the seed.
    """

    architecture: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: int = 32
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.architecture, str) or self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; known: {sorted(ARCHITECTURES)}")
        if not isinstance(self.kwargs, dict) or not all(isinstance(k, str) for k in self.kwargs):
            raise ValueError(f"encoder kwargs must be an object of named arguments, got {self.kwargs!r}")
        width = self.kwargs.get("width", 64)
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 1024:
            raise ValueError(f"encoder kwargs.width must be an integer in 1..1024, got {width!r}")
        size = self.input_size
        if isinstance(size, bool) or not isinstance(size, int) or not MIN_INPUT_SIZE <= size <= MAX_INPUT_SIZE:
            raise ValueError(f"input_size must be an integer in {MIN_INPUT_SIZE}..{MAX_INPUT_SIZE} (pixels), "
                             f"got {size!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither (ToTensor only)")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is None:
                continue
            if (isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 3
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
                raise ValueError(f"{name} must be 3 numbers (R, G, B), got {value!r}")
            value = tuple(float(v) for v in value)
            if not all(math.isfinite(v) for v in value) or (name == "std" and min(value) < MIN_STD):
                limit = f" of at least {MIN_STD:g} (a smaller one scales pixels to infinity)" if name == "std" else ""
                raise ValueError(f"{name} must be 3 finite numbers{limit}, got {value!r}")
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form saved in ``config.json``."""
        d = asdict(self)
        d["mean"], d["std"] = (list(self.mean), list(self.std)) if self.mean else (None, None)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderConfig:
        """Parse a config dict; unknown keys are an error, not silently dropped."""
        known = {"architecture", "kwargs", "input_size", "mean", "std"}
        if not isinstance(d, dict) or "architecture" not in d:
            raise ValueError(f"encoder config must be a dict with an 'architecture' key, got {d!r}")
        if extra := set(d) - known:
            raise ValueError(f"unknown encoder config keys {sorted(extra)}; known: {sorted(known)}")
        return cls(**d)


def build_encoder(config: EncoderConfig | dict[str, Any]) -> nn.Module:
    """Build the encoder a config describes (random init); returns ``(N, feature_dim)`` features."""
    if isinstance(config, dict):
        config = EncoderConfig.from_dict(config)
    try:
        return ARCHITECTURES[config.architecture](**config.kwargs)
    except TypeError as e:
        raise ValueError(f"bad kwargs {config.kwargs} for architecture {config.architecture!r}: {e}") from e
