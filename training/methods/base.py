"""What every method is: an encoder (the part the zoo publishes), heads, a loss and a seed recipe."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from ..config import TrainConfig

VIEWS = ("separate", "joint")


@dataclass(frozen=True)
class Recipe:
    """A method's training recipe in the seed notebook (AdamW on all parameters, batch 256, 50 epochs).

    ``schedule``: one of ``training.optim.SCHEDULES``. ``views``: ``separate`` runs each view through
    the network on its own (BatchNorm statistics per view), ``joint`` both views in one batch.
    """

    lr: float
    weight_decay: float
    schedule: str
    warmup_epochs: int
    views: str


def mlp(in_dim: int, hidden: int, out: int, batchnorm: bool) -> nn.Sequential:
    """Linear - [BatchNorm] - ReLU - Linear."""
    layers = [nn.Linear(in_dim, hidden)] + ([nn.BatchNorm1d(hidden)] if batchnorm else []) + [nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.Linear(hidden, out))


class SSLMethod(nn.Module):
    """Base of every method. ``forward(views, local_views=None)`` takes both global views stacked in
    one batch ``(2N, 3, H, W)`` (view 1 first), optionally K small local crops ``(K N, 3, h, w)`` (crop
    by crop), and returns the loss; ``after_step(progress)`` runs after each optimiser step.

    A symmetric method defines ``project`` (network to the loss's input) and ``pair_loss``; the base
    ``forward`` takes the loss of the two global views and, with local crops, averages it with each
    local crop's loss against both global views (multi-crop, as SwAV). A subclass sets ``title``
    and ``recipe`` and takes its own hyperparameters as keyword-only constructor arguments whose
    defaults are the seed's: each becomes a ``--flag`` of ``ssl-zoo train`` and a key of the
    config's ``method_options``.
    """

    title: ClassVar[str]
    recipe: ClassVar[Recipe]

    def __init__(self, encoder: nn.Module, views: str | None = None) -> None:
        super().__init__()
        views = views or self.recipe.views
        if views not in VIEWS:
            raise ValueError(f"views must be one of {VIEWS}, got {views!r}")
        self.encoder = encoder
        self.views = views

    @classmethod
    def options(cls) -> dict[str, Any]:
        """The method's own hyperparameters and their seed values (its keyword-only constructor arguments)."""
        return {p.name: p.default for p in inspect.signature(cls).parameters.values() if p.kind is p.KEYWORD_ONLY}

    @classmethod
    def from_config(cls, encoder: nn.Module, cfg: TrainConfig) -> SSLMethod:
        """The method for a (resolved) training config: heads ``proj_hidden``/``proj_out``, ``views``, options."""
        return cls(encoder, cfg.proj_hidden, cfg.proj_out, views=cfg.views, **cfg.method_options)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Images to the loss's input (encoder, then heads)."""
        raise NotImplementedError(f"{type(self).__name__} defines neither project() nor its own forward()")

    def pair_loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The loss between two views' projections of the same images (row i of ``a`` and ``b``)."""
        raise NotImplementedError(f"{type(self).__name__} defines neither pair_loss() nor its own forward()")

    def forward(self, views: torch.Tensor, local_views: torch.Tensor | None = None) -> torch.Tensor:
        z1, z2 = self.per_view(self.project, views)
        if local_views is None:
            return self.pair_loss(z1, z2)
        pairs = [(z1, z2)] + [(z, g) for z in self.local_crops(self.project, local_views, len(z1)) for g in (z1, z2)]
        return torch.stack([self.pair_loss(a, b) for a, b in pairs]).mean()

    @staticmethod
    def local_crops(net: Callable[[torch.Tensor], torch.Tensor], local_views: torch.Tensor,
                    n: int) -> tuple[torch.Tensor, ...]:
        """``net`` on every local crop in one pass (BatchNorm statistics over all of them), split per crop."""
        return net(local_views).split(n)

    def per_view(self, net: Callable[[torch.Tensor], torch.Tensor],
                 views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``net`` on view 1 and view 2: in one pass over both (``joint``) or one pass per view (``separate``)."""
        if self.views == "joint":
            out1, out2 = net(views).chunk(2)
            return out1, out2
        v1, v2 = views.chunk(2)
        return net(v1), net(v2)

    def after_step(self, progress: float) -> None:
        """Hook after each optimiser step (BYOL's EMA); ``progress``: steps done / all steps of the run."""
