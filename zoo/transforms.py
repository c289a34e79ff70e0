"""Model preprocessing as a plain batched callable, built from an encoder config."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from .data import to_float_nchw
from .encoders import EncoderConfig


class Preprocess:
    """Images -> the float ``(N, 3, S, S)`` batch the encoder expects.

    Takes uint8 ``(N, H, W, 3)`` arrays/tensors (decoded images) or float ``(N, 3, H, W)``
    tensors in [0, 1]; resizes the short side to ``input_size`` and center-crops when the size
    differs, then normalises with the config's mean/std (none: ToTensor only, as in the seed).
    """

    def __init__(self, config: EncoderConfig) -> None:
        self.size = config.input_size
        self.mean, self.std = config.mean, config.std

    def __call__(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(images)
        if x.dtype == torch.uint8:
            x = to_float_nchw(x)
        elif not (x.is_floating_point() and x.ndim == 4 and x.shape[1] == 3):
            raise ValueError(f"expected uint8 (N, H, W, 3) or float (N, 3, H, W) images, "
                             f"got {x.dtype} {tuple(x.shape)}")
        if x.shape[-2:] != (self.size, self.size):
            x = F.center_crop(F.resize(x, self.size, antialias=True), [self.size, self.size])
        if self.mean is not None:
            x = F.normalize(x, self.mean, self.std)
        return x

    def __repr__(self) -> str:
        return f"Preprocess(size={self.size}, mean={self.mean}, std={self.std})"


def image_to_array(image: Any, size: int) -> np.ndarray:
    """A PIL image or image path -> RGB uint8 ``(size, size, 3)``.

    Any mode is converted to RGB (16-bit and 32-bit integer images are scaled to 8 bits);
    other sizes get the short side resized to ``size`` and a center crop, as ``Preprocess`` does.
    """
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as im:
            return image_to_array(im.copy(), size)
    if not isinstance(image, Image.Image):
        raise TypeError(f"cannot read an image from {type(image).__name__}; pass a PIL image or a path")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        scale = 257.0 if image.mode.startswith("I;16") or np.asarray(image).max() > 255 else 1.0
        image = Image.fromarray((np.asarray(image, dtype=np.float32) / scale).clip(0, 255).astype(np.uint8))
    image = image.convert("RGB")
    if image.size != (size, size):
        image = F.center_crop(F.resize(F.pil_to_tensor(image), size, antialias=True), [size, size])
        return image.permute(1, 2, 0).numpy()
    return np.asarray(image)
