"""Barlow Twins (Zbontar et al., 2021) as in the seed notebook."""

from __future__ import annotations

import torch
from torch import nn

from ..losses import barlow_twins_loss
from .base import Recipe, SSLMethod, mlp


class BarlowTwins(SSLMethod):
    """BN projector 512-2048-128, cross-correlation loss with off-diagonal weight ``alpha``."""

    title = "Barlow Twins"
    recipe = Recipe(lr=0.5, weight_decay=1e-6, schedule="constant", warmup_epochs=0, views="separate")

    def __init__(self, encoder: nn.Module, hidden: int = 2048, out: int = 128, views: str | None = None, *,
                 alpha: float = 0.005) -> None:
        if not alpha >= 0:
            raise ValueError(f"Barlow Twins' alpha must be >= 0, got {alpha}")
        super().__init__(encoder, views)
        self.projector = mlp(encoder.feature_dim, hidden, out, batchnorm=True)
        self.alpha = alpha

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))

    def pair_loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return barlow_twins_loss(a, b, self.alpha)
