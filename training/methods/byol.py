"""BYOL (Grill et al., 2020) as in the seed notebook."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..losses import byol_loss
from .base import Recipe, SSLMethod, mlp


EMA_SCHEDULES = ("constant", "cosine")


class BYOL(SSLMethod):
    """Online encoder + BN projector + BN predictor (512-2048-128); target = EMA copy of encoder + projector.

    Loss: ``2 - 2 cos`` between each view's prediction and the other view's target projection,
    averaged over the 2N rows (the notebook's ``online(cat[x1, x2])`` against ``target(cat[x2, x1])``;
    BatchNorm's batch statistics do not depend on the order of the rows). The target runs in
    train mode (batch statistics) under no_grad; after every step its parameters move towards
    the online ones with momentum ``ema`` (``ema_schedule="cosine"``: from ``ema`` to 1 on a
    cosine over the run, as lightly's and solo-learn's CIFAR configs). Local crops (multi-crop) pass
    the online network only; each is predicted against both global views' targets.
    """

    title = "BYOL"
    recipe = Recipe(lr=0.5, weight_decay=1e-6, schedule="constant", warmup_epochs=0, views="joint")

    def __init__(self, encoder: nn.Module, hidden: int = 2048, out: int = 128, views: str | None = None, *,
                 ema: float = 0.99, ema_schedule: str = "constant") -> None:
        if not 0 <= ema <= 1:
            raise ValueError(f"BYOL's ema must be in [0, 1], got {ema}")
        if ema_schedule not in EMA_SCHEDULES:
            raise ValueError(f"BYOL's ema_schedule must be one of {EMA_SCHEDULES}, got {ema_schedule!r}")
        super().__init__(encoder, views)
        self.projector = mlp(encoder.feature_dim, hidden, out, batchnorm=True)
        self.predictor = mlp(out, hidden, out, batchnorm=True)
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.ema, self.ema_schedule = ema, ema_schedule

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The online network: encoder, projector, predictor."""
        return self.predictor(self.projector(self.encoder(x)))

    def forward(self, views: torch.Tensor, local_views: torch.Tensor | None = None) -> torch.Tensor:
        p1, p2 = self.per_view(self.predict, views)
        with torch.no_grad():
            t1, t2 = self.per_view(lambda x: self.target_projector(self.target_encoder(x)), views)
        loss = (byol_loss(p1, t2) + byol_loss(p2, t1)) / 2
        if local_views is None:
            return loss
        local = [byol_loss(p, t) for p in self.local_crops(self.predict, local_views, len(p1)) for t in (t1, t2)]
        return (2 * loss + sum(local)) / (2 + len(local))  # the mean over every (online view, target) pair

    def momentum(self, progress: float) -> float:
        """The target's EMA momentum after ``progress`` (0..1) of the run."""
        if self.ema_schedule == "constant":
            return self.ema
        return 1 - (1 - self.ema) * (math.cos(math.pi * min(progress, 1.0)) + 1) / 2

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        weight = 1 - self.momentum(progress)
        for online, target in ((self.encoder, self.target_encoder), (self.projector, self.target_projector)):
            torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), weight)
