"""Model preprocessing as a plain batched callable, built from an encoder config."""

from __future__ import annotations

import numpy as np
import torch
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
