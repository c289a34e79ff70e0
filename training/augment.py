"""The seed's SimCLR augmentation, on batched tensors on the training device.

Same distribution as the seed's torchvision pipeline (RandomResizedCrop(32, scale 0.2-1),
horizontal flip, ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8 in a random order, grayscale p=0.2,
Gaussian blur k=3 sigma in [0.1, 2] p=0.5, no normalisation), but every parameter is drawn per
sample for a whole batch at once. Hand-written: the seed's PIL-per-sample pipeline and kornia's
per-op modules are both slower here (``benchmarks/training_speed.py``, README's augmentation table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    import torchvision.transforms as T

_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of the SimCLR augmentation (defaults: the seed notebook's)."""

    size: int = 32
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_p: float = 0.5


def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (high - low) + low


def crop_boxes(n: int, height: int, width: int, cfg: AugmentConfig, g: torch.Generator,
               device: torch.device | str) -> torch.Tensor:
    """Per-sample ``(top, left, h, w)`` with torchvision RandomResizedCrop.get_params's law:
    up to 10 tries of (area, log-ratio), the first that fits wins, else the whole image."""
    area = height * width
    target = area * (torch.rand(n, 10, generator=g, device=device) * (cfg.scale[1] - cfg.scale[0]) + cfg.scale[0])
    log_lo, log_hi = math.log(cfg.ratio[0]), math.log(cfg.ratio[1])
    aspect = torch.exp(torch.rand(n, 10, generator=g, device=device) * (log_hi - log_lo) + log_lo)
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.float().argmax(1, keepdim=True)
    w = torch.where(ok.any(1), w.gather(1, first)[:, 0], torch.full_like(w[:, 0], width))
    h = torch.where(ok.any(1), h.gather(1, first)[:, 0], torch.full_like(h[:, 0], height))
    top = (torch.rand(n, generator=g, device=device) * (height - h + 1)).floor()
    left = (torch.rand(n, generator=g, device=device) * (width - w + 1)).floor()
    return torch.stack([top, left, h, w], 1)


def resized_crop_flip(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each image to its box, flip where asked and resize to ``size`` (bilinear), in one grid_sample."""
    n, _, height, width = x.shape
    top, left, h, w = boxes.unbind(1)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = torch.where(flip, -w / width, w / width)
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of a float (N, 3, H, W) batch, as (N, 1, H, W) (torchvision's rgb_to_grayscale)."""
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _frac(x: torch.Tensor) -> torch.Tensor:
    """``x mod 1``; torch.remainder is several times slower on CPU."""
    return x - torch.floor(x)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    delta = maxc - minc
    s = delta / maxc.clamp_min(1e-12)
    inv = 1.0 / delta.clamp_min(1e-12)  # gray pixels: r = g = b, so the first branch gives hue 0
    h = torch.where(maxc == r, (g - b) * inv, torch.where(maxc == g, 2.0 + (b - r) * inv, 4.0 + (r - g) * inv))
    return torch.stack([_frac(h / 6.0), s, maxc], 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    # Closed form: channel n in (R, G, B) = v - v s clamp(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6, n = 5, 3, 1.
    h, s, v = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    k = 6 * _frac((torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1) + 6 * h) / 6)
    return v - v * s * torch.minimum(k, 4 - k).clamp_(0, 1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp_(0, 1)


def _jitter_op(op: int, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    if op == 0:  # brightness
        return (x * factor.view(-1, 1, 1, 1)).clamp_(0, 1)
    if op == 1:  # contrast: blend with the mean of the grayscale image
        return _blend(x, grayscale(x).mean((1, 2, 3), keepdim=True), factor)
    if op == 2:  # saturation: blend with the grayscale image
        return _blend(x, grayscale(x), factor)
    hsv = _rgb_to_hsv(x)  # hue: rotate on the hue circle
    hsv[:, 0] = _frac(hsv[:, 0] + factor.view(-1, 1, 1))
    return _hsv_to_rgb(hsv)


def color_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, sync_free: bool = False) -> torch.Tensor:
    """Apply brightness/contrast/saturation/hue ``factors`` (N, 4) in a per-sample ``order`` (N, 4).

    Default: each op runs on the samples that take it at that step (fastest on CPU).
    ``sync_free``: each op runs on the whole batch and ``where`` picks, with no data-dependent
    shapes, so no host-device synchronisation on CUDA.
    """
    if sync_free:
        for step in range(4):
            out = x
            for op in range(4):
                out = torch.where((order[:, step] == op).view(-1, 1, 1, 1), _jitter_op(op, x, factors[:, op]), out)
            x = out
        return x
    x = x.clone()
    for step in range(4):
        for op in range(4):
            idx = (order[:, step] == op).nonzero()[:, 0]
            if len(idx):
                x.index_copy_(0, idx, _jitter_op(op, x[idx], factors[idx, op]))
    return x


def gaussian_blur3(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """3x3 Gaussian blur with a per-sample sigma (sigma <= 0: identity), reflect padding.
    Separable taps [a, b, a] as shifted sums: faster on CPU than a grouped conv2d."""
    side = torch.where(sigma > 0, torch.exp(-1.0 / (2 * sigma.clamp_min(1e-6) ** 2)), torch.zeros_like(sigma))
    a = (side / (1 + 2 * side)).to(x.dtype).view(-1, 1, 1, 1)
    b = 1 - 2 * a
    p = F.pad(x, (1, 1, 1, 1), mode="reflect")
    p = a * (p[..., :, :-2] + p[..., :, 2:]) + b * p[..., :, 1:-1]
    return a * (p[..., :-2, :] + p[..., 2:, :]) + b * p[..., 1:-1, :]


@dataclass(frozen=True)
class AugmentParams:
    """Every random choice of one batch, per sample: crop box, flip, colour jitter (applied, factors,
    order), grayscale and blur sigma (0: no blur). Indexing selects samples, so the processes of a
    torchrun job can draw the global batch's parameters and each apply its own rows."""

    boxes: torch.Tensor
    flip: torch.Tensor
    jittered: torch.Tensor
    factors: torch.Tensor
    order: torch.Tensor
    gray: torch.Tensor
    sigma: torch.Tensor

    def __getitem__(self, rows: torch.Tensor | slice) -> AugmentParams:
        return AugmentParams(*(getattr(self, f.name)[rows] for f in fields(self)))

    def __len__(self) -> int:
        return len(self.flip)


class BatchAugment:
    """Callable: uint8 ``(N, H, W, 3)`` or float ``(N, 3, H, W)`` images -> augmented float
    ``(N, 3, size, size)`` in [0, 1], each sample with its own random parameters."""

    def __init__(self, config: AugmentConfig = AugmentConfig(), sync_free: bool | None = None) -> None:
        """``sync_free``: avoid data-dependent shapes (no host-device syncs); default: on CUDA only."""
        self.config, self.sync_free = config, sync_free

    def draw(self, n: int, height: int, width: int, generator: torch.Generator,
             device: torch.device | str = "cpu") -> AugmentParams:
        """The random parameters of ``n`` samples of ``height`` x ``width`` images."""
        cfg, g = self.config, generator
        boxes = crop_boxes(n, height, width, cfg, g, device)
        flip = torch.rand(n, generator=g, device=device) < cfg.flip_p
        jittered = torch.rand(n, generator=g, device=device) < cfg.jitter_p
        b, c, s, hue = cfg.jitter
        factors = torch.stack([_uniform(n, 1 - b, 1 + b, g, device), _uniform(n, 1 - c, 1 + c, g, device),
                               _uniform(n, 1 - s, 1 + s, g, device), _uniform(n, -hue, hue, g, device)], 1)
        order = torch.rand(n, 4, generator=g, device=device).argsort(1)
        gray = torch.rand(n, generator=g, device=device) < cfg.gray_p
        sigma = _uniform(n, *cfg.blur_sigma, g, device)
        blurred = torch.rand(n, generator=g, device=device) < cfg.blur_p
        return AugmentParams(boxes, flip, jittered, factors, order, gray,
                             torch.where(blurred, sigma, torch.zeros_like(sigma)))

    def apply(self, images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Augment ``images`` (one row per sample of ``params``) with the given parameters."""
        if len(images) != len(params):
            raise ValueError(f"{len(images)} images but parameters for {len(params)}")
        x = images.permute(0, 3, 1, 2).float().div_(255) if images.dtype == torch.uint8 else images.float()
        x = resized_crop_flip(x, params.boxes, params.flip, self.config.size)
        if self.sync_free if self.sync_free is not None else x.is_cuda:
            neutral = torch.tensor([1.0, 1.0, 1.0, 0.0], device=x.device)  # identity jitter for the others
            x = color_jitter(x, torch.where(params.jittered[:, None], params.factors, neutral), params.order,
                             sync_free=True)
        else:
            idx = params.jittered.nonzero()[:, 0]
            x = x.index_copy(0, idx, color_jitter(x[idx], params.factors[idx], params.order[idx]))
        x = torch.where(params.gray.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)
        return gaussian_blur3(x, params.sigma)

    def views(self, images: torch.Tensor, generator: torch.Generator, copies: int = 2, rank: int = 0,
              world_size: int = 1) -> torch.Tensor:
        """``copies`` views of each of this rank's uint8 ``images`` (copy by copy: view 1 of every image, then
        view 2, ...), with the parameters a single process draws for the global batch (``world_size``
        equal parts, this rank's part ``rank``): a torchrun job augments every image as one process would."""
        b = len(images)
        n = b * world_size
        own = torch.arange(rank * b, (rank + 1) * b, device=images.device)
        params = self.draw(copies * n, images.shape[1], images.shape[2], generator, images.device)
        return self.apply(images.repeat(copies, 1, 1, 1), params[torch.cat([own + c * n for c in range(copies)])])

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        g = generator or torch.Generator(images.device).manual_seed(int(torch.randint(2**62, ())))
        height, width = images.shape[1:3] if images.dtype == torch.uint8 else images.shape[2:4]
        return self.apply(images, self.draw(len(images), height, width, g, images.device))


def seed_pil_pipeline() -> T.Compose:
    """The seed notebook's per-sample torchvision/PIL pipeline: the reference that BatchAugment
    reproduces, used by the tests and benchmarks for comparison."""
    from torchvision import transforms as T

    return T.Compose([
        T.RandomResizedCrop(32, scale=(0.2, 1.0)), T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(3, sigma=(0.1, 2.0))], p=0.5), T.ToTensor()])
