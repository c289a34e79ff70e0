"""What a run trains and measures on: CIFAR-10 as the zoo's recipes use it, or your own images (a folder, a text
file of paths, webdataset shards) decoded once at ``--image-size``. With labels (CIFAR-10's, or first-level
sub-folders, or webdataset ``.cls`` members) the k-NN monitor and final probes run as for CIFAR-10; without
them, the label-free measures (``zoo.eval.labelfree``) do."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from zoo import ImageArrays, load_cifar10
from zoo.data import CIFAR10_CLASSES
from zoo.retrieval.arrays import decode_collection

from .augment import AugmentConfig, BatchAugment
from .config import TrainConfig

CIFAR10 = "cifar10"
HOLD_OUT_EVERY = 5  # your own labelled images: every 5th of each class is held out of training, as the probes' test
LABEL_FREE = {"monitor": (2048, 512), "final": (10_000, 2048)}  # (images, augmented pairs) of the label-free measures


@dataclass
class TrainData:
    """The training images (uint8 ``(N, S, S, 3)``), the labelled ``(bank, test)`` pairs of the per-epoch monitor
    and of the final probes (None without labels), the data set's identity and the files that were unusable."""

    images: np.ndarray
    monitor: tuple[ImageArrays, ImageArrays] | None
    final: tuple[ImageArrays, ImageArrays] | None
    dataset: dict[str, Any]
    failures: list[dict[str, str]]

    def label_free_sizes(self, stage: str) -> tuple[int, int]:
        """(images, augmented pairs) of the label-free measures at ``stage``, at most the training images."""
        return tuple(min(n, len(self.images)) for n in LABEL_FREE[stage])

    def label_free_inputs(self, stage: str, image_size: int, seed: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """The images of the label-free measures at ``stage`` (``monitor``/``final``: a fixed seeded sample of the
        training images) and two augmented views of the first of them, the same at every epoch."""
        count, pairs = self.label_free_sizes(stage)
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(seed))[:count].numpy()
        sample = self.images[order]  # in random order: the pairs and uniformity's rows, taken first, are unbiased
        augment = BatchAugment(AugmentConfig(size=image_size))
        generator = torch.Generator().manual_seed(seed)
        first = torch.from_numpy(sample[:pairs])
        return sample, augment(first, generator), augment(first, generator)


def is_cifar10(data: str | None) -> bool:
    """Whether ``--data`` means CIFAR-10: unset, ``cifar10``, or a CIFAR-10 root (``train/<class>`` folders)."""
    if data in (None, CIFAR10):
        return True
    train = Path(data).expanduser() / "train"
    return train.is_dir() and {p.name for p in train.iterdir() if p.is_dir()} == set(CIFAR10_CLASSES)


def has_splits(data: str) -> bool:
    """Whether ``--data`` is a folder of ``train/`` and ``test/`` folders (each ``<class>/<image>``)."""
    root = Path(data).expanduser()
    return root.is_dir() and {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")} == {
        "train", "test"}


def load_train_data(cfg: TrainConfig) -> TrainData:
    """The data of ``cfg``: CIFAR-10 (its train and test splits, per-class subsets as ``cfg`` says) or your own
    images (``cfg.data``), decoded at ``cfg.image_size``."""
    if is_cifar10(cfg.data):
        root = None if cfg.data in (None, CIFAR10) else cfg.data
        train, test = (_resized(load_cifar10(split, root), cfg.image_size) for split in ("train", "test"))
        return _train_data(train, test, cfg, _subset, {"name": CIFAR10}, [])
    if has_splits(cfg.data):
        return _own_splits(cfg)
    decoded = decode_collection(cfg.data, cfg.image_size)
    dataset = {"name": "own images", "image_size": cfg.image_size, **decoded.source}
    if decoded.labels is None:
        return TrainData(decoded.images, None, None, dataset, decoded.failures)
    data = ImageArrays(decoded.images, decoded.labels, decoded.classes)
    position = np.zeros(len(data), np.int64)  # each image's position within its class
    for c in range(len(data.classes)):
        rows = np.flatnonzero(data.labels == c)
        position[rows] = np.arange(len(rows))
    held_out = position % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1
    bank, test = _rows(data, ~held_out), _rows(data, held_out)
    if len(np.unique(test.labels)) < 2:
        raise ValueError(f"{cfg.data}: fewer than 2 classes have {HOLD_OUT_EVERY} images, so the held-out images "
                         "for the k-NN probes would all be of one class (any encoder scores 100 %): give at least "
                         f"{HOLD_OUT_EVERY} images to two classes or more, or put the images in one folder (no labels)")
    return _train_data(bank, test, cfg, _cap, dataset, decoded.failures)


def _own_splits(cfg: TrainConfig) -> TrainData:
    """A folder of ``train/<class>/`` and ``test/<class>/``: trained on train, probed on test (the same classes)."""
    train, test = (decode_collection(Path(cfg.data).expanduser() / split, cfg.image_size) for split in ("train", "test"))
    if train.classes is None or train.classes != test.classes:
        raise ValueError(f"{cfg.data}: train/ and test/ must each hold the same class folders (<class>/<image>); "
                         f"found {train.classes} and {test.classes}")
    bank, held = (ImageArrays(d.images, d.labels, d.classes) for d in (train, test))
    dataset = {"name": "own images", "image_size": cfg.image_size, **train.source, "test": test.source}
    return _train_data(bank, held, cfg, _cap, dataset, train.failures + test.failures)


def _train_data(bank: ImageArrays, test: ImageArrays, cfg: TrainConfig,
                take: Callable[[ImageArrays, int | None], ImageArrays], dataset: dict[str, Any],
                failures: list[dict[str, str]]) -> TrainData:
    """The images trained on, the monitor's probe (bank, test) and the final probe's, each taken per class by
    ``take`` (CIFAR-10: ``_subset``, your own images: ``_cap``) as ``cfg`` says; the final probe tests on all."""
    return TrainData(take(bank, cfg.train_per_class).images, (take(bank, cfg.eval_train_per_class),
                     take(test, cfg.eval_test_per_class)), (take(bank, cfg.final_train_per_class), test), dataset,
                     failures)


def _rows(data: ImageArrays, mask: np.ndarray) -> ImageArrays:
    return ImageArrays(data.images[mask], data.labels[mask], data.classes)


def _subset(data: ImageArrays, per_class: int | None) -> ImageArrays:
    """CIFAR-10's balanced subset of ``per_class`` images per class (an error past a class's size; None: all)."""
    return data.per_class(per_class) if per_class else data


def _cap(data: ImageArrays, per_class: int | None) -> ImageArrays:
    """The first ``per_class`` images of every class (all of a smaller class; None: everything)."""
    if per_class is None:
        return data
    keep = np.zeros(len(data), bool)
    for c in range(len(data.classes)):
        keep[np.flatnonzero(data.labels == c)[:per_class]] = True
    return _rows(data, keep)


def _resized(data: ImageArrays, size: int) -> ImageArrays:
    """CIFAR-10 at ``size`` px: bilinear with antialiasing, as your own images are decoded (unchanged at 32)."""
    if data.images.shape[1] == size:
        return data
    out = np.empty((len(data), size, size, 3), np.uint8)
    for start in range(0, len(data), 4096):  # in chunks: float copies of all 50,000 images would take gigabytes
        x = torch.from_numpy(data.images[start:start + 4096]).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start:start + 4096] = x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return ImageArrays(out, data.labels, data.classes)

