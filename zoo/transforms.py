"""Model preprocessing as a plain batched callable, built from an encoder config."""

from __future__ import annotations

import base64
import binascii
import os
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from .data import to_float_nchw
from .encoders import EncoderConfig
from .imagefile import image_to_array


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


def resolve_data_config(model: Any) -> dict[str, Any]:
    """The preprocessing of ``model`` (an ``Encoder``, an ``EncoderConfig`` or its dict) in timm's
    ``resolve_data_config`` terms: input size, interpolation, mean/std (None: no normalisation), crop."""
    config = model if isinstance(model, EncoderConfig) else getattr(model, "config", None)
    if config is None:
        config = EncoderConfig.from_dict(model)
    size = config.input_size
    return {"input_size": (3, size, size), "interpolation": "bilinear", "mean": config.mean, "std": config.std,
            "crop_pct": 1.0, "crop_mode": "center"}


class ToArray:
    """A PIL image (or path, bytes) -> RGB uint8 ``(size, size, 3)``: ``image_to_array`` as a transform step."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Any) -> np.ndarray:
        return np.array(image_to_array(image, self.size))  # a writable copy, as ToTensor wants

    def __repr__(self) -> str:
        return f"ToArray(size={self.size}, short side resized, center crop, bilinear)"


def create_transform(model: Any) -> Any:
    """``model``'s preprocessing as a torchvision transform for your own ``Dataset`` (timm's
    ``create_transform``): a PIL image -> the float ``(3, S, S)`` tensor ``model`` takes, exactly what
    ``Encoder.embed`` computes for the same image."""
    from torchvision import transforms as T

    cfg = resolve_data_config(model)
    steps = [ToArray(cfg["input_size"][-1]), T.ToTensor()]
    if cfg["mean"] is not None:
        steps.append(T.Normalize(cfg["mean"], cfg["std"]))
    return T.Compose(steps)


ARRAY_RULE = ("an image array or tensor is (H, W, 3), (3, H, W) or grayscale (H, W); a batch is (N, H, W, 3) or "
              "(N, 3, H, W); uint8 in 0..255 or float in [0, 1]; the channel axis is the one of size 3 at either "
              "end (when both ends have size 3 the layout is ambiguous: pass a PIL image)")


def images_to_array(images: Any, size: int) -> np.ndarray | torch.Tensor:
    """One image or a list of them (paths, ``data:image/...;base64,`` URLs, bytes, PIL images, arrays or
    tensors in any layout ``ARRAY_RULE`` allows) -> uint8 ``(N, size, size, 3)``. An array or tensor batch
    already ``size`` x ``size`` passes through as uint8 ``(N, size, size, 3)`` or float ``(N, 3, size, size)``
    for ``Preprocess``; images of other sizes are resized as image files are (Pillow, short side, centre)."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim not in (2, 3, 4):
            raise ValueError(f"got an array of shape {tuple(images.shape)}: {ARRAY_RULE}")
        x = torch.as_tensor(np.array(images) if isinstance(images, np.ndarray) else images)
        batch = _batch(x if x.ndim == 4 else x[None])
        spatial = batch.shape[1:3] if batch.dtype == torch.uint8 else batch.shape[2:4]
        if tuple(spatial) == (size, size):
            return batch
        images = list(batch)
    if not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise ValueError("no images given (empty list)")
    return np.stack([_one_image(im, i, size) for i, im in enumerate(images)])


def _one_image(image: Any, position: int, size: int) -> np.ndarray:
    """``image_to_array`` of one input; a file that cannot be decoded is named in the error."""
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return image_to_array(_array_to_pil(image), size)
    source = _encoded(image)
    try:
        return image_to_array(source, size)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        name = os.fspath(image) if isinstance(image, (str, os.PathLike)) else f"image #{position}"
        raise ValueError(f"{name} cannot be read as an image ({type(e).__name__}: {e})") from e


def _encoded(image: Any) -> Any:
    """A ``data:`` URL as its bytes; a path that does not exist refused in one short line; anything else as is."""
    if isinstance(image, str) and image.startswith("data:"):
        header, comma, payload = image.partition(",")
        if not comma or not header.endswith(";base64"):
            raise ValueError(f"a data URL must be data:image/<type>;base64,<data>; got one starting {image[:40]!r}")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the data URL's base64 payload is malformed") from None
    if isinstance(image, (str, os.PathLike)) and not os.path.exists(image):
        shown = os.fspath(image)
        shown = shown if len(shown) <= 120 else f"{shown[:100]}... ({len(shown)} characters)"
        raise FileNotFoundError(f"no image file {shown!r}: pass a path to an image file, a data:image/...;base64 URL, "
                                "bytes, a PIL image or an array")
    return image


def _layout(x: torch.Tensor, what: str) -> torch.Tensor:
    """``x`` with its channel axis last (the axis of size 3 at either end, else size 1 for grayscale)."""
    first, last = x.shape[0], x.shape[-1]
    if first == 3 and last == 3:
        raise ValueError(f"{what} of shape {tuple(x.shape)} is ambiguous: {ARRAY_RULE}")
    if last == 3:
        return x
    if first == 3:
        return x.movedim(0, -1)
    raise ValueError(f"{what} of shape {tuple(x.shape)} has no channel axis of size 3 at either end: {ARRAY_RULE}")


def _checked_values(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.dtype == torch.uint8 or (x.is_floating_point() and (x.numel() == 0 or (x.min() >= 0 and x.max() <= 1))):
        return x
    if x.is_floating_point():
        raise ValueError(f"{what} holds floats outside [0, 1] (from {float(x.min()):g} to {float(x.max()):g}): "
                         f"divide 0..255 pixels by 255; {ARRAY_RULE}")
    raise ValueError(f"{what} is {x.dtype}: {ARRAY_RULE}")


def _batch(x: torch.Tensor) -> torch.Tensor:
    """A batch in either layout (grayscale ``(N, H, W)`` too) -> uint8 ``(N, H, W, 3)`` or float ``(N, 3, H, W)``,
    as ``Preprocess`` takes it."""
    x = _checked_values(x, "a batch")
    if x.ndim == 3:
        x = x[..., None].expand(-1, -1, -1, 3)
    hwc = _layout(x[0], "each image of the batch").shape == x[0].shape
    if x.dtype == torch.uint8:
        return x if hwc else x.permute(0, 2, 3, 1).contiguous()
    return x.permute(0, 3, 1, 2).contiguous() if hwc else x


def _array_to_pil(image: np.ndarray | torch.Tensor) -> Image.Image:
    """A single image array or tensor in any layout ``ARRAY_RULE`` allows -> PIL."""
    x = _checked_values(torch.as_tensor(np.array(image) if isinstance(image, np.ndarray) else image), "an image")
    if x.ndim == 2:
        x = x[..., None].expand(-1, -1, 3)
    x = _layout(x, "an image")
    if x.is_floating_point():
        x = x.mul(255).round().byte()
    return Image.fromarray(x.contiguous().numpy())
