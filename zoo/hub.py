"""Load encoders by registry name, Hub id or local directory; embed images; probe loaded models."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                    RevisionNotFoundError)
from torch import nn

from .encoders import EncoderConfig, build_encoder
from .registry import entry
from .serialization import CONFIG_NAME, WEIGHTS_NAME, load_encoder, ready
from .transforms import Preprocess, image_to_array


class HashMismatchError(RuntimeError):
    """A downloaded file's sha256 differs from the pinned one."""


def sha256_of(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load(name_or_id: str, revision: str | None = None, device: str = "cpu") -> nn.Module:
    """Return a ready encoder (eval mode, ``.preprocess`` attached) from a registry name,
    a Hub id ``owner/name[@revision]`` or a local directory (config.json + model.safetensors).

    Hub downloads go through huggingface_hub (its cache, HF_ENDPOINT, HF_TOKEN and
    HF_HUB_OFFLINE apply). Registry models are checked against their pinned sha256.
    """
    if Path(name_or_id).is_dir():
        return load_encoder(name_or_id, device)
    if "/" not in name_or_id:
        spec = entry(name_or_id)
        if spec.get("repo_id") is None:  # the random-init baseline: built, not downloaded
            config = EncoderConfig.from_dict(spec["encoder"])
            with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
                torch.manual_seed(spec["seed"])
                encoder = build_encoder(config)
            return ready(encoder, config, {"name": name_or_id}, device)
        if spec.get("revision") is None and revision is None:
            raise RuntimeError(f"{name_or_id} has no published revision yet. {spec.get('note', '')}")
        pinned = revision is None or revision == spec["revision"]
        return _load_from_hub(spec["repo_id"], revision or spec["revision"], device,
                              expected_sha256=spec.get("sha256") if pinned else None)
    repo_id, _, at = name_or_id.partition("@")
    return _load_from_hub(repo_id, revision or at or None, device)


def _load_from_hub(repo_id: str, revision: str | None, device: str, expected_sha256: str | None = None) -> nn.Module:
    where = f"{repo_id}@{revision or 'main'}"
    paths = {}
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            paths[name] = Path(hf_hub_download(repo_id, name, revision=revision))
        except RepositoryNotFoundError as e:
            raise FileNotFoundError(f"model repo {repo_id} not found on the Hub ({_endpoint()}); check the id, "
                                    "or set HF_TOKEN if it is private") from e
        except RevisionNotFoundError as e:
            raise FileNotFoundError(f"revision {revision} not found in {repo_id}") from e
        except LocalEntryNotFoundError as e:
            raise ConnectionError(f"cannot reach the Hub ({_endpoint()}) and {name} of {where} is not in the "
                                  "local cache; connect to the network, or load a cached revision") from e
        except EntryNotFoundError as e:  # after its subclass LocalEntryNotFoundError
            raise FileNotFoundError(f"{where} has no {name}: not an ssl-zoo encoder repo") from e
    weights = paths[WEIGHTS_NAME]
    actual = sha256_of(weights)
    blob_name = weights.resolve().name  # huggingface_hub names LFS blobs by their sha256
    for expected, source in ((expected_sha256, "the registry pin"), (blob_name, "the Hub's LFS object id")):
        if expected and len(expected) == 64 and actual != expected:
            raise HashMismatchError(f"{where}/{WEIGHTS_NAME}: sha256 {actual} does not match {source} {expected}. "
                                    f"The file at {weights.resolve()} was left in place; delete it (or the "
                                    "huggingface_hub cache entry) to download it again.")
    if paths[CONFIG_NAME].parent != weights.parent:
        raise RuntimeError(f"{where}: config and weights resolved to different snapshots")
    encoder = load_encoder(weights.parent, device)
    encoder.info.update({"repo_id": repo_id, "revision": weights.parent.name, "sha256": actual})
    return encoder


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def embed(encoder: nn.Module, images: Any, *, normalize: bool = False, batch_size: int = 256) -> torch.Tensor:
    """Features for a batch tensor/array, or a list of PIL images or image paths, using the
    encoder's own preprocessing (``encoder.preprocess``)."""
    from .probes import extract_features

    preprocess = getattr(encoder, "preprocess", None) or Preprocess(EncoderConfig("resnet18_cifar"))
    if isinstance(images, (list, tuple)):
        images = np.stack([image_to_array(im, preprocess.size) for im in images])
    return extract_features(encoder, images, preprocess=preprocess, normalize=normalize, batch_size=batch_size,
                            progress=False)


def probe(encoder: nn.Module, dataset: str = "cifar10", *, knn: bool = True, linear: bool = True,
          train_per_class: int | None = None, data: str | None = None) -> dict[str, Any]:
    """The model-card protocol (``zoo.probes.evaluate``) on CIFAR-10: train bank of all 50,000
    images (or the first ``train_per_class`` per class), all 10,000 test images."""
    from .data import load_cifar10
    from .probes import evaluate

    if dataset != "cifar10":
        raise ValueError(f"dataset {dataset!r} is not supported; only 'cifar10'")
    train, test = load_cifar10("train", data), load_cifar10("test", data)
    train = train.per_class(train_per_class) if train_per_class else train
    return evaluate(encoder, train, test, knn=knn, weighted_knn=knn, linear=linear)
