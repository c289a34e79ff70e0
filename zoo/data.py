"""CIFAR-10 and ImageFolder data, decoded once into cached uint8 arrays.

Resolution order for CIFAR-10: an explicit ``root``, then ``$SSL_ZOO_DATA``, then the
project's shared JPEG copy (``../shared/data/cifar10-jpeg``), then torchvision's download.
A root is read as an ImageFolder (``<root>/<split>/<class>/*.jpg``) when that folder
exists, otherwise as torchvision's ``cifar-10-batches-py`` (downloaded if allowed).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .io import atomic_write, sha256_file

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
CIFAR10_COUNTS = {"train": 50_000, "test": 10_000}
SHARED_CIFAR10 = Path("..") / "shared" / "data" / "cifar10-jpeg"
_CACHE_FORMAT = 1
_HOW_TO_GET = (
    "Point root= (ssl-zoo: --data) or $SSL_ZOO_DATA at a folder holding either "
    "train/<class>/*.jpg and test/<class>/*.jpg (ImageFolder layout) or torchvision's "
    "cifar-10-batches-py; or connect to the internet so torchvision can download CIFAR-10."
)


class DatasetError(RuntimeError):
    """The dataset is missing, incomplete or not what was asked for."""


@dataclass(frozen=True)
class ImageArrays:
    """Decoded images ``(N, H, W, 3)`` uint8 with int64 labels and class names."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def per_class(self, n: int) -> ImageArrays:
        """The first ``n`` images of every class, in dataset order (a balanced subset)."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        if n < 1 or n > counts.min():
            raise ValueError(f"per_class(n={n}): n must be in 1..{counts.min()} (smallest class size)")
        idx = np.sort(np.concatenate([np.flatnonzero(self.labels == c)[:n] for c in range(len(self.classes))]))
        return ImageArrays(self.images[idx], self.labels[idx], self.classes)


def to_float_nchw(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> float32 ``(N, 3, H, W)`` in [0, 1], like torchvision's ToTensor."""
    t = torch.as_tensor(images)
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {t.dtype} {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2).float().div_(255)


def default_cache_dir() -> Path:
    """``$SSL_ZOO_CACHE`` or ``~/.cache/ssl-zoo``."""
    return Path(os.environ.get("SSL_ZOO_CACHE", Path.home() / ".cache" / "ssl-zoo")).expanduser()


def load_cifar10(
    split: str, root: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> ImageArrays:
    """Load a CIFAR-10 split (``"train"``/``"test"``) as cached uint8 arrays, validating counts and classes."""
    if split not in CIFAR10_COUNTS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    source = cifar10_root(root)
    if source is not None and (source / split).is_dir():
        data = load_image_folder(source / split, cache_dir=cache_dir)
    else:
        data = _load_torchvision_cifar10(split, source, cache_dir=cache_dir, download=download)
    _validate_cifar10(data, split, source)
    return data


def cifar10_root(root: str | os.PathLike | None) -> Path | None:
    """Where CIFAR-10 is read from: ``root``, ``$SSL_ZOO_DATA``, the shared JPEG copy, or None (download)."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get("SSL_ZOO_DATA"):
        return Path(os.environ["SSL_ZOO_DATA"]).expanduser()
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (base / SHARED_CIFAR10 / "train").is_dir():
            return (base / SHARED_CIFAR10).resolve()
    return None


def _validate_cifar10(data: ImageArrays, split: str, source: Path | None) -> None:
    where = source or "torchvision's download"
    if data.classes != CIFAR10_CLASSES:
        raise DatasetError(f"CIFAR-10 at {where}: classes {list(data.classes)} are not CIFAR-10's "
                           f"{list(CIFAR10_CLASSES)}. {_HOW_TO_GET}")
    want = CIFAR10_COUNTS[split]
    counts = np.bincount(data.labels, minlength=10)
    if len(data) != want or (counts != want // 10).any() or data.images.shape[1:] != (32, 32, 3):
        raise DatasetError(f"CIFAR-10 {split} at {where} is incomplete: {len(data)} images of shape "
                           f"{data.images.shape[1:]} (per class {counts.tolist()}), expected {want} "
                           f"32x32 RGB images, {want // 10} per class. {_HOW_TO_GET}")


def _load_torchvision_cifar10(split: str, root: Path | None, *, cache_dir, download: bool) -> ImageArrays:
    from torchvision.datasets import CIFAR10

    root = root or default_cache_dir() / "torchvision"
    try:
        # torchvision checks the archive's md5 before reading its (pickled) batches.
        ds = CIFAR10(str(root), train=split == "train", download=download)
    except Exception as e:  # no internet, a corrupt archive, a missing folder
        raise DatasetError(f"CIFAR-10 not found at {root} and could not be downloaded ({e}). {_HOW_TO_GET}") from e
    return ImageArrays(np.ascontiguousarray(ds.data), np.asarray(ds.targets, dtype=np.int64), tuple(ds.classes))


def load_image_folder(
    root: str | os.PathLike, *, image_size: int | None = None, cache_dir: str | os.PathLike | None = None,
) -> ImageArrays:
    """Decode an ImageFolder (``root/<class>/<image>``) once into RGB uint8 arrays, cached on disk.

    Images must share one size unless ``image_size`` is given (each is then resized to a square).
    The cache is keyed by the folder's path and rebuilt when its files change or the cache is corrupt.
    """
    from torchvision.datasets import ImageFolder

    root = Path(root).expanduser().resolve()
    try:
        folder = ImageFolder(str(root))
    except (FileNotFoundError, OSError) as e:
        raise DatasetError(f"no images found in {root}: {e}. Expected {root}/<class>/<image files>. "
                           f"{_HOW_TO_GET}") from e
    fingerprint = _fingerprint([p for p, _ in folder.samples], image_size)
    key = hashlib.sha256(f"{root}|{image_size}".encode()).hexdigest()[:16]
    cache = Path(cache_dir or default_cache_dir()) / "arrays" / f"{root.name}-{key}"
    cached = read_array_cache(cache, fingerprint)
    if cached is not None:
        return ImageArrays(cached[0]["images"], cached[0]["labels"], tuple(folder.classes))
    images = _decode_all([p for p, _ in folder.samples], image_size, root)
    labels = np.asarray(folder.targets, dtype=np.int64)
    write_array_cache(cache, fingerprint, {"images": images, "labels": labels})
    return ImageArrays(images, labels, tuple(folder.classes))


def _fingerprint(paths: list[str], image_size: int | None) -> dict:
    return {"format": _CACHE_FORMAT, "files": len(paths), "image_size": image_size, "sources": stat_digest(paths)}


def stat_digest(paths: list[str] | tuple[str, ...]) -> str:
    """sha256 of each file's path, size, modification and change time: what a decode cache is keyed on (the
    change time catches a file replaced at the same size and mtime, as ``cp -p`` or ``rsync -t`` do)."""
    h = hashlib.sha256()
    for path in paths:
        try:
            st = os.stat(path)
            h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}\n".encode())
        except OSError:
            h.update(f"{path}|missing\n".encode())
    return h.hexdigest()


def _decode_all(paths: list[str], image_size: int | None, root: Path) -> np.ndarray:
    arrays = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if image_size is not None:
                    im = im.resize((image_size, image_size), Image.BILINEAR)
                arrays.append(np.asarray(im))
        except OSError as e:
            raise DatasetError(f"cannot decode image {p}: {e}. Remove or replace the file.") from e
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DatasetError(f"images in {root} have different sizes ({sorted(shapes)[:3]}...): "
                           "pass image_size= to resize them to one square size")
    return np.stack(arrays)


def read_array_cache(cache: Path, fingerprint: dict, names: tuple[str, ...] = ("images", "labels"),
                     ) -> tuple[dict[str, np.ndarray], dict] | None:
    """The arrays ``names`` cached in ``cache`` and its meta.json, or None when the cache is missing, corrupt
    (a file's sha256 differs) or of other sources (``fingerprint`` differs)."""
    try:
        meta = json.loads((cache / "meta.json").read_text())
        if meta["fingerprint"] != fingerprint:
            return None
        files = {name: cache / f"{name}.npy" for name in names}
        if any(sha256_file(files[n]) != meta["sha256"][n] for n in files):
            return None
        return {n: np.load(f) for n, f in files.items()}, meta
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_array_cache(cache: Path, fingerprint: dict, arrays: dict[str, np.ndarray], extra: dict | None = None) -> None:
    """Write ``arrays`` as .npy files and a meta.json (fingerprint, their sha256, ``extra``), each atomically."""
    cache.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name, array in arrays.items():
        path = cache / f"{name}.npy"
        atomic_write(path, lambda f, a=array: np.save(f, a))
        digests[name] = sha256_file(path)
    meta = {"fingerprint": fingerprint, "sha256": digests, **(extra or {})}
    atomic_write(cache / "meta.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))
