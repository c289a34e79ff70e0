import json

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import zoo
from zoo import ARCHITECTURES, EncoderConfig, Preprocess, build_encoder
from zoo.encoders import resnet18_cifar


def _seed_resnet18_cifar() -> nn.Module:
    """The seed notebook's model: torchvision ResNet-18 with the CIFAR stem and fc removed."""
    m = torchvision.models.resnet18()
    m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    m.fc = nn.Identity()
    return m


def test_cifar_resnet18_equals_the_seed_model():
    ours, seed = resnet18_cifar().eval(), _seed_resnet18_cifar().eval()
    seed.load_state_dict(ours.state_dict(), strict=True)  # same names and shapes
    x = torch.rand(4, 3, 32, 32)
    assert ours(x).shape == (4, 512)
    torch.testing.assert_close(ours(x), seed(x))
    assert ours.conv1.kernel_size == (3, 3) and ours.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in ours.modules())


def test_initialisation_is_the_seeds():
    """The seed builds torchvision's resnet18 (kaiming_normal fan_out on every conv) and then swaps
    in a new conv1, which keeps nn.Conv2d's default init: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in))."""
    torch.manual_seed(0)
    model = resnet18_cifar()
    bound = 1 / (3 * 3 * 3) ** 0.5
    conv1 = model.conv1.weight
    assert conv1.abs().max() <= bound
    assert conv1.std().item() == pytest.approx(bound / 3**0.5, rel=0.1)  # uniform's std, not kaiming_normal's
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m is not model.conv1:
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            assert m.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.1), name


def test_width_reduced_resnet():
    m = build_encoder({"architecture": "resnet18_cifar", "kwargs": {"width": 16}})
    assert m.feature_dim == 128 and m(torch.rand(2, 3, 32, 32)).shape == (2, 128)
    assert sum(p.numel() for p in m.parameters()) < sum(p.numel() for p in resnet18_cifar().parameters()) / 10


def test_imagenet_stem_baseline():
    m = build_encoder(EncoderConfig("resnet18_imagenet"))
    assert isinstance(m.maxpool, nn.MaxPool2d) and m.conv1.stride == (2, 2)
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 512)


def test_config_json_rebuilds_the_exact_module():
    config = EncoderConfig("resnet18_cifar", {"width": 8}, input_size=32, mean=(0.5, 0.5, 0.5), std=(0.25,) * 3)
    restored = EncoderConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    a, b = build_encoder(config).eval(), build_encoder(restored).eval()
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(a(x), b(x))


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="known: .*resnet18_cifar"):
        EncoderConfig("resnet50_cifar")
    with pytest.raises(ValueError, match="unknown encoder config keys \\['colour'\\]"):
        EncoderConfig.from_dict({"architecture": "resnet18_cifar", "colour": "red"})
    with pytest.raises(ValueError, match="bad kwargs"):
        build_encoder({"architecture": "resnet18_cifar", "kwargs": {"depth": 3}})
    with pytest.raises(ValueError, match="both mean and std"):
        EncoderConfig("resnet18_cifar", mean=(0.5, 0.5, 0.5))


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_every_architecture_pools_its_feature_map_to_feature_dim(architecture):
    encoder = zoo.Encoder(EncoderConfig(architecture)).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        fmap, pooled = encoder.forward_features(x), encoder(x)
    assert fmap.shape[:2] == (2, encoder.feature_dim) and pooled.shape == (2, encoder.feature_dim)
    torch.testing.assert_close(fmap.mean((2, 3)), pooled)


def test_preprocess_totensor_normalise_and_resize(rng):
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    plain = Preprocess(EncoderConfig("resnet18_cifar"))(images)
    assert plain.shape == (2, 3, 32, 32) and plain.max() <= 1 and plain.min() >= 0
    norm = Preprocess(EncoderConfig("resnet18_cifar", mean=(0.5,) * 3, std=(0.5,) * 3))(images)
    torch.testing.assert_close(norm, (plain - 0.5) / 0.5)
    big = Preprocess(EncoderConfig("resnet18_cifar", input_size=16))(rng.integers(0, 256, (1, 40, 32, 3), dtype=np.uint8))
    assert big.shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="uint8"):
        Preprocess(EncoderConfig("resnet18_cifar"))(torch.zeros(2, 32, 32))

