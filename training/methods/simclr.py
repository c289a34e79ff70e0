"""SimCLR (Chen et al., 2020) as in the seed notebook."""

from __future__ import annotations

import torch
from torch import nn

from ..losses import nt_xent
from .base import Recipe, SSLMethod, mlp


class SimCLR(SSLMethod):
    """Projector 512-2048-128 (Linear-ReLU-Linear, no BN), NT-Xent at ``temperature``."""

    title = "SimCLR"
    recipe = Recipe(lr=0.6, weight_decay=0.0, schedule="epoch-warmup-cosine", warmup_epochs=10, views="separate")

    def __init__(self, encoder: nn.Module, hidden: int = 2048, out: int = 128, views: str | None = None, *,
                 temperature: float = 0.5) -> None:
        if not temperature > 0:
            raise ValueError(f"SimCLR's temperature must be > 0, got {temperature}")
        super().__init__(encoder, views)
        self.projector = mlp(encoder.feature_dim, hidden, out, batchnorm=False)
        self.temperature = temperature

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))

    def pair_loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return nt_xent(a, b, self.temperature)
