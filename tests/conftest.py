"""Shared fixtures: the real CIFAR-10 JPEG copy from ../shared, decoded once per cache."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CIFAR10_JPEG = REPO.parent / "shared" / "data" / "cifar10-jpeg"
# Decoded arrays persist between local runs (ignored by git); a fresh clone decodes once.
os.environ.setdefault("SSL_ZOO_CACHE", str(REPO / ".pytest_cache" / "ssl-zoo"))
os.environ.setdefault("SSL_ZOO_DATA", str(CIFAR10_JPEG))


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The Hub the tests talk to is tests/hub_server.py on loopback; huggingface_hub reads these
# at import, so they are set before anything imports it. No test reaches huggingface.co.
HUB_PORT = free_port()
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{HUB_PORT}"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="ssl-zoo-hf-home-")
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_TOKEN", None)
os.environ.pop("HF_HUB_OFFLINE", None)

needs_cifar10 = pytest.mark.skipif(not (CIFAR10_JPEG / "train").is_dir(),
                                   reason=f"real CIFAR-10 copy not found at {CIFAR10_JPEG}")


@pytest.fixture(scope="session")
def cifar10_test():
    if not (CIFAR10_JPEG / "test").is_dir():
        pytest.skip(f"real CIFAR-10 copy not found at {CIFAR10_JPEG}")
    from zoo import load_cifar10

    return load_cifar10("test")


@pytest.fixture(scope="session")
def cifar10_train():
    if not (CIFAR10_JPEG / "train").is_dir():
        pytest.skip(f"real CIFAR-10 copy not found at {CIFAR10_JPEG}")
    from zoo import load_cifar10

    return load_cifar10("train")


@pytest.fixture(scope="session")
def small_features(cifar10_train, cifar10_test):
    """Real features: a random-init width-16 CIFAR ResNet-18 on 200 train / 50 test images per class."""
    from zoo import build_encoder, extract_features

    torch.manual_seed(0)
    model = build_encoder({"architecture": "resnet18_cifar", "kwargs": {"width": 16}})
    train, test = cifar10_train.per_class(200), cifar10_test.per_class(50)
    return (extract_features(model, train).numpy(), train.labels,
            extract_features(model, test).numpy(), test.labels)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory):
    """A Hub-protocol server on 127.0.0.1 (tests/hub_server.py), for the real huggingface_hub client."""
    from hub_server import HubServer

    server = HubServer(tmp_path_factory.mktemp("hub"), port=HUB_PORT).start()
    yield server
    server.stop()


def tiny_model_dir(tmp_path_factory, width: int):
    """A random-init (seed 0) CIFAR ResNet-18 of ``width`` saved as a model folder."""
    import zoo

    torch.manual_seed(0)
    return zoo.Encoder(zoo.EncoderConfig("resnet18_cifar", {"width": width})).save_pretrained(
        tmp_path_factory.mktemp(f"model-w{width}"))
