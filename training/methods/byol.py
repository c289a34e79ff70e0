"""BYOL (Grill et al., 2020) as in the seed notebook."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..losses import byol_loss
from .base import Recipe, SSLMethod, mlp


class BYOL(SSLMethod):
    """Online encoder + BN projector + BN predictor (512-2048-128); target = EMA copy of encoder + projector.

    Loss: ``2 - 2 cos`` between each view's prediction and the other view's target projection,
    averaged over the 2N rows (the notebook's ``online(cat[x1, x2])`` against ``target(cat[x2, x1])``;
    BatchNorm's batch statistics do not depend on the order of the rows). The target runs in
    train mode (batch statistics) under no_grad; after every step its parameters move towards
    the online ones with momentum ``ema``.
    """

    title = "BYOL"
    recipe = Recipe(lr=0.5, weight_decay=1e-6, schedule="constant", warmup_epochs=0, views="joint")

    def __init__(self, encoder: nn.Module, hidden: int = 2048, out: int = 128, views: str | None = None, *,
                 ema: float = 0.99) -> None:
        if not 0 <= ema <= 1:
            raise ValueError(f"BYOL's ema must be in [0, 1], got {ema}")
        super().__init__(encoder, views)
        self.projector = mlp(encoder.feature_dim, hidden, out, batchnorm=True)
        self.predictor = mlp(out, hidden, out, batchnorm=True)
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.ema = ema

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        p1, p2 = self.per_view(lambda x: self.predictor(self.projector(self.encoder(x))), views)
        with torch.no_grad():
            t1, t2 = self.per_view(lambda x: self.target_projector(self.target_encoder(x)), views)
        return (byol_loss(p1, t2) + byol_loss(p2, t1)) / 2

    @torch.no_grad()
    def after_step(self) -> None:
        for online, target in ((self.encoder, self.target_encoder), (self.projector, self.target_projector)):
            torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), 1 - self.ema)
