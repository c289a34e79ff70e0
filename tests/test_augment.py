import torch
from PIL import Image
from torchvision import transforms as T

from training.augment import AugmentConfig, BatchAugment, crop_boxes, seed_pil_pipeline


def test_crop_area_and_ratio_follow_torchvision():
    g = torch.Generator().manual_seed(0)
    boxes = crop_boxes(10_000, 32, 32, AugmentConfig(), g, "cpu")
    torch.manual_seed(0)
    ref = torch.tensor([T.RandomResizedCrop.get_params(torch.zeros(3, 32, 32), (0.2, 1.0), (3 / 4, 4 / 3))
                        for _ in range(10_000)], dtype=torch.float32)
    area_got, area_want = boxes[:, 2] * boxes[:, 3] / 1024, ref[:, 2] * ref[:, 3] / 1024
    assert abs(area_got.mean() - area_want.mean()) < 0.01
    for q in (0.1, 0.5, 0.9):
        assert abs(area_got.quantile(q) - area_want.quantile(q)) < 0.03
    assert abs((boxes[:, 3] / boxes[:, 2]).mean() - (ref[:, 3] / ref[:, 2]).mean()) < 0.02
    assert (boxes[:, 0] + boxes[:, 2] <= 32).all() and (boxes[:, 1] + boxes[:, 3] <= 32).all()
    assert (boxes[:, 2:] >= 1).all()


def test_parameters_differ_across_the_batch(cifar10_test):
    images = torch.from_numpy(cifar10_test.images[:1]).repeat(64, 1, 1, 1)  # one image, 64 times
    out = BatchAugment()(images, torch.Generator().manual_seed(0))
    assert out.shape == (64, 3, 32, 32) and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1
    flat = out.flatten(1)
    assert len(torch.unique(flat, dim=0)) == 64  # every copy got its own crop/jitter/blur
    again = BatchAugment()(images, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # reproducible from the generator


def test_grayscale_fraction(cifar10_test):
    images = torch.from_numpy(cifar10_test.images[:4000])
    out = BatchAugment()(images, torch.Generator().manual_seed(1))
    gray = ((out[:, 0] - out[:, 1]).abs().amax((1, 2)) < 1e-6) & ((out[:, 1] - out[:, 2]).abs().amax((1, 2)) < 1e-6)
    assert abs(gray.float().mean().item() - 0.2) < 0.025


def test_output_statistics_match_the_seed_pipeline(cifar10_test):
    images = cifar10_test.images[:2000]
    torch.manual_seed(0)
    seed = seed_pil_pipeline()
    ref = torch.stack([seed(Image.fromarray(im)) for im in images])
    ours = BatchAugment()(torch.from_numpy(images), torch.Generator().manual_seed(2))
    # Per-channel mean and spread, per-image contrast and sharpness (mean absolute pixel difference).
    torch.testing.assert_close(ours.mean((0, 2, 3)), ref.mean((0, 2, 3)), atol=0.01, rtol=0)
    torch.testing.assert_close(ours.std((0, 2, 3)), ref.std((0, 2, 3)), atol=0.01, rtol=0)
    contrast_ours, contrast_ref = ours.std((1, 2, 3)).mean(), ref.std((1, 2, 3)).mean()
    assert abs(contrast_ours - contrast_ref) < 0.01
    sharp_ours = (ours[..., 1:] - ours[..., :-1]).abs().mean()
    sharp_ref = (ref[..., 1:] - ref[..., :-1]).abs().mean()
    assert abs(sharp_ours - sharp_ref) / sharp_ref < 0.1


def test_sync_free_path_gives_the_same_images(cifar10_test):
    """The CUDA path (no data-dependent shapes) draws the same parameters and gives the same output."""
    images = torch.from_numpy(cifar10_test.images[:256])
    a = BatchAugment(sync_free=False)(images, torch.Generator().manual_seed(3))
    b = BatchAugment(sync_free=True)(images, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
