import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor

from conftest import CIFAR10_JPEG, needs_cifar10
from zoo import DatasetError, load_cifar10, load_image_folder
from zoo.data import CIFAR10_CLASSES, to_float_nchw


def _copy_classes(dst: Path, classes: list[str], per_class: int, split: str = "test") -> Path:
    """A small ImageFolder of real CIFAR-10 JPEGs."""
    for c in classes:
        (dst / c).mkdir(parents=True)
        for f in sorted((CIFAR10_JPEG / split / c).iterdir())[:per_class]:
            shutil.copy(f, dst / c / f.name)
    return dst


@needs_cifar10
def test_cifar10_splits_are_complete_and_in_cifar_order(cifar10_train, cifar10_test):
    for data, n in ((cifar10_train, 50_000), (cifar10_test, 10_000)):
        assert data.images.shape == (n, 32, 32, 3) and data.images.dtype == np.uint8
        assert data.labels.dtype == np.int64
        assert data.classes == CIFAR10_CLASSES
        assert np.bincount(data.labels).tolist() == [n // 10] * 10
    # The first test airplane decodes to the JPEG's own pixels.
    first = np.asarray(Image.open(CIFAR10_JPEG / "test" / "airplane" / "0000.jpg").convert("RGB"))
    assert np.array_equal(cifar10_test.images[0], first)


@needs_cifar10
def test_cache_is_reused_and_rebuilt_when_corrupt(tmp_path):
    folder = _copy_classes(tmp_path / "imgs", ["cat", "dog"], 20)
    first = load_image_folder(folder, cache_dir=tmp_path / "cache")
    (cache,) = (tmp_path / "cache" / "arrays").iterdir()
    images_npy = cache / "images.npy"
    stamp = images_npy.stat().st_mtime_ns
    again = load_image_folder(folder, cache_dir=tmp_path / "cache")
    assert images_npy.stat().st_mtime_ns == stamp  # read from the cache, not re-decoded
    assert np.array_equal(first.images, again.images) and np.array_equal(first.labels, again.labels)
    # Flip bytes in the cached array: the checksum fails and the cache is rebuilt from the JPEGs.
    raw = bytearray(images_npy.read_bytes())
    raw[-100:] = bytes(100)
    images_npy.write_bytes(bytes(raw))
    rebuilt = load_image_folder(folder, cache_dir=tmp_path / "cache")
    assert np.array_equal(first.images, rebuilt.images)
    images_npy.write_bytes(b"truncated")
    assert np.array_equal(first.images, load_image_folder(folder, cache_dir=tmp_path / "cache").images)


@needs_cifar10
def test_stale_cache_is_rebuilt_when_files_change(tmp_path):
    folder = _copy_classes(tmp_path / "imgs", ["cat", "dog"], 10)
    assert len(load_image_folder(folder, cache_dir=tmp_path / "c")) == 20
    shutil.copy(CIFAR10_JPEG / "test" / "cat" / "0500.jpg", folder / "cat" / "extra.jpg")
    data = load_image_folder(folder, cache_dir=tmp_path / "c")
    assert len(data) == 21 and np.bincount(data.labels).tolist() == [11, 10]


def test_missing_dataset_names_path_and_remedy(tmp_path):
    with pytest.raises(DatasetError, match=str(tmp_path)) as err:
        load_cifar10("test", tmp_path / "nowhere", download=False)
    assert "SSL_ZOO_DATA" in str(err.value)
    with pytest.raises(DatasetError, match="no images found"):
        load_image_folder(tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_cifar10("validation", tmp_path)


@needs_cifar10
def test_incomplete_cifar10_folder_is_refused(tmp_path):
    _copy_classes(tmp_path / "root" / "test", ["airplane", "automobile"], 5)
    with pytest.raises(DatasetError, match="classes"):
        load_cifar10("test", tmp_path / "root", cache_dir=tmp_path / "c")
    _copy_classes(tmp_path / "full" / "test", list(CIFAR10_CLASSES), 3)
    with pytest.raises(DatasetError, match="incomplete: 30 images"):
        load_cifar10("test", tmp_path / "full", cache_dir=tmp_path / "c")


@needs_cifar10
def test_corrupt_image_and_mixed_sizes(tmp_path):
    folder = _copy_classes(tmp_path / "imgs", ["cat"], 3)
    Image.new("RGB", (48, 40), "red").save(folder / "cat" / "big.png")
    with pytest.raises(DatasetError, match="image_size"):
        load_image_folder(folder, cache_dir=tmp_path / "c")
    resized = load_image_folder(folder, image_size=32, cache_dir=tmp_path / "c")
    assert resized.images.shape == (4, 32, 32, 3)
    (folder / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(DatasetError, match="broken.jpg"):
        load_image_folder(folder, image_size=32, cache_dir=tmp_path / "c")


@needs_cifar10
def test_per_class_subset_is_balanced(cifar10_test):
    sub = cifar10_test.per_class(7)
    assert np.bincount(sub.labels).tolist() == [7] * 10
    assert np.array_equal(sub.images[0], cifar10_test.images[0])
    with pytest.raises(ValueError, match="smallest class"):
        cifar10_test.per_class(1001)


def test_to_float_nchw_matches_torchvision_to_tensor(rng):
    images = rng.integers(0, 256, (3, 8, 5, 3), dtype=np.uint8)
    expected = torch.stack([to_tensor(Image.fromarray(im)) for im in images])
    assert torch.equal(to_float_nchw(images), expected)
    with pytest.raises(ValueError, match="uint8"):
        to_float_nchw(images.astype(np.float32))
