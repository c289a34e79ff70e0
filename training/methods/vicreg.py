"""VICReg (Bardes, Ponce and LeCun, 2022): variance-invariance-covariance regularisation."""

from __future__ import annotations

import torch
from torch import nn

from ..losses import vicreg_loss
from .base import Recipe, SSLMethod, mlp


class VICReg(SSLMethod):
    """BN projector 512-2048-128, VICReg's loss with the paper's weights (25 / 25 / 1).

    Not in the seed notebook: its recipe copies the notebook's Barlow Twins settings, the closest method.
    """

    title = "VICReg"
    recipe = Recipe(lr=0.5, weight_decay=1e-6, schedule="constant", warmup_epochs=0, views="separate")

    def __init__(self, encoder: nn.Module, hidden: int = 2048, out: int = 128, views: str | None = None, *,
                 sim_weight: float = 25.0, var_weight: float = 25.0, cov_weight: float = 1.0) -> None:
        if min(sim_weight, var_weight, cov_weight) < 0:
            raise ValueError(f"VICReg's weights must be >= 0, got {sim_weight}, {var_weight}, {cov_weight}")
        super().__init__(encoder, views)
        self.projector = mlp(encoder.feature_dim, hidden, out, batchnorm=True)
        self.sim_weight, self.var_weight, self.cov_weight = sim_weight, var_weight, cov_weight

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))

    def pair_loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return vicreg_loss(a, b, self.sim_weight, self.var_weight, self.cov_weight)
