"""SimCLR, BYOL and Barlow Twins: an encoder plus the method's heads and loss.

Each method's ``forward(views)`` takes both views stacked in one batch ``(2N, 3, H, W)``
(view 1 first) and returns the loss; ``after_step()`` runs after each optimiser step.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .losses import barlow_twins_loss, byol_loss, nt_xent


def mlp(in_dim: int, hidden: int, out: int, batchnorm: bool) -> nn.Sequential:
    """Linear - [BatchNorm] - ReLU - Linear."""
    layers = [nn.Linear(in_dim, hidden)] + ([nn.BatchNorm1d(hidden)] if batchnorm else []) + [nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.Linear(hidden, out))


class SSLMethod(nn.Module):
    """Base: holds the encoder (the part the zoo publishes)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def after_step(self) -> None:
        """Hook after each optimiser step (BYOL's EMA)."""


class _ProjectedPairMethod(SSLMethod):
    """Encoder + projector on both views in one pass; the subclass's ``pair_loss`` compares them."""

    def __init__(self, encoder: nn.Module, hidden: int, out: int, batchnorm: bool) -> None:
        super().__init__(encoder)
        self.projector = mlp(encoder.feature_dim, hidden, out, batchnorm=batchnorm)

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.projector(self.encoder(views)).float().chunk(2)
        return self.pair_loss(z1, z2)


class SimCLR(_ProjectedPairMethod):
    """Projector 512-2048-128 (no BN), NT-Xent at ``temperature``."""

    def __init__(self, encoder: nn.Module, hidden: int = 2048, out: int = 128, temperature: float = 0.5) -> None:
        super().__init__(encoder, hidden, out, batchnorm=False)
        self.temperature = temperature

    def pair_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return nt_xent(z1, z2, self.temperature)


class BarlowTwins(_ProjectedPairMethod):
    """BN projector 512-2048-128, cross-correlation loss with off-diagonal weight ``alpha``."""

    def __init__(self, encoder: nn.Module, hidden: int = 2048, out: int = 128, alpha: float = 0.005) -> None:
        super().__init__(encoder, hidden, out, batchnorm=True)
        self.alpha = alpha

    def pair_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return barlow_twins_loss(z1, z2, self.alpha)


class BYOL(SSLMethod):
    """Online encoder + BN projector + BN predictor; target = EMA copy of encoder + projector.

    Loss: ``byol_loss(p1, t2) + byol_loss(p2, t1)`` (symmetric); the target runs under
    no_grad and is updated with momentum ``ema`` after every step.
    """

    def __init__(self, encoder: nn.Module, hidden: int = 2048, out: int = 128, ema: float = 0.99) -> None:
        super().__init__(encoder)
        self.projector = mlp(encoder.feature_dim, hidden, out, batchnorm=True)
        self.predictor = mlp(out, hidden, out, batchnorm=True)
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.ema = ema

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        p1, p2 = self.predictor(self.projector(self.encoder(views))).float().chunk(2)
        with torch.no_grad():
            t1, t2 = self.target_projector(self.target_encoder(views)).float().chunk(2)
        return byol_loss(p1, t2) + byol_loss(p2, t1)

    @torch.no_grad()
    def after_step(self) -> None:
        for online, target in ((self.encoder, self.target_encoder), (self.projector, self.target_projector)):
            torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), 1 - self.ema)


METHODS: dict[str, type[SSLMethod]] = {"simclr": SimCLR, "byol": BYOL, "barlowtwins": BarlowTwins}
