"""Model preprocessing as a plain batched callable, built from an encoder config."""

from __future__ import annotations

import io
import math
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
        """A batch of images -> the preprocessed float batch."""
        if isinstance(images, np.ndarray) and not images.flags.writeable:
            images = images.copy()  # torch warns on read-only arrays (e.g. np.asarray of a PIL image)
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


def image_to_array(image: Image.Image | str | os.PathLike | bytes, size: int) -> np.ndarray:
    """One image (PIL image, path or encoded bytes) -> RGB uint8 ``(size, size, 3)``.

    Any mode is converted to RGB (16- and 32-bit integer images are scaled to 8 bits). Other sizes
    get the short side resized to ``size`` and a center crop, as ``Preprocess`` does, with work
    bounded by the output: a JPEG is decoded at a reduced scale (Pillow's ``draft``) and only the
    central square is resampled, so a 1 x 1,000,000 strip costs no more than a small image.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        image = io.BytesIO(bytes(image))
    if isinstance(image, (str, os.PathLike, io.IOBase)):
        with Image.open(image) as im:
            return image_to_array(im, size)
    if not isinstance(image, Image.Image):
        raise TypeError(f"cannot read an image from {type(image).__name__}; pass a path, bytes, a PIL image, "
                        "a uint8 (H, W, 3) array or a float (3, H, W) tensor")
    draft_for(image, size)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        scale16 = 257.0 if image.mode.startswith("I;16") or np.asarray(image).max() > 255 else 1.0
        image = Image.fromarray((np.asarray(image, dtype=np.float32) / scale16).clip(0, 255).astype(np.uint8))
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (size, size):
        width, height = image.size
        short = min(width, height)
        left, top = (width - short) / 2, (height - short) / 2
        image = image.resize((size, size), Image.BILINEAR, box=(left, top, left + short, top + short))
    return np.asarray(image)


def draft_for(image: Image.Image, size: int) -> None:
    """Have Pillow decode a JPEG at the smallest scale whose short side is still at least ``size`` (its
    ``draft``: DCT scaling, 1/2 to 1/8), so a 20-megapixel photo decodes to well under a megapixel; other
    formats, and JPEGs already that small, are left as they are."""
    short = min(image.size)
    if image.format in ("JPEG", "MPO") and short > size:  # MPO: the JPEG variant cameras write
        scale = size / short
        image.draft("RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale)))


def images_to_array(images: Any, size: int) -> np.ndarray | torch.Tensor:
    """One image or a list of them (paths, bytes, PIL images, uint8 ``(H, W, 3)`` arrays) -> uint8
    ``(N, size, size, 3)``; a batch array/tensor (uint8 ``(N, H, W, 3)`` or float ``(N, 3, H, W)``)
    passes through for ``Preprocess``."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim == 4:
            return images if isinstance(images, torch.Tensor) else np.ascontiguousarray(images)
        if images.ndim == 3:
            return images[None] if isinstance(images, torch.Tensor) else np.ascontiguousarray(images)[None]
        raise ValueError(f"expected an image array (H, W, 3) / (3, H, W) or a batch (N, ...), got shape "
                         f"{tuple(images.shape)}")
    if not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise ValueError("no images given (empty list)")
    arrays = []
    for im in images:
        arrays.append(image_to_array(_array_to_pil(im) if isinstance(im, (np.ndarray, torch.Tensor)) else im, size))
    return np.stack(arrays)


def _array_to_pil(image: np.ndarray | torch.Tensor) -> Image.Image:
    """A single uint8 ``(H, W, 3)`` or float ``(3, H, W)`` [0, 1] image -> PIL, for a list of mixed inputs."""
    x = torch.as_tensor(np.array(image) if isinstance(image, np.ndarray) else image)
    if x.dtype == torch.uint8 and x.ndim == 3 and x.shape[-1] == 3:
        return Image.fromarray(x.numpy())
    if x.is_floating_point() and x.ndim == 3 and x.shape[0] == 3:
        return Image.fromarray(x.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy())
    raise ValueError(f"a single image must be uint8 (H, W, 3) or float (3, H, W), got {x.dtype} {tuple(x.shape)}")
