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
    """Base of every method. ``forward(views)`` takes both views stacked in one batch
    ``(2N, 3, H, W)`` (view 1 first) and returns the loss; ``after_step()`` runs after each
    optimiser step. A subclass sets ``title`` and ``recipe`` and takes its own hyperparameters
    as keyword-only constructor arguments whose defaults are the seed's: each becomes a
    ``--flag`` of ``ssl-zoo train`` and a key of the config's ``method_options``.
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

    def per_view(self, net: Callable[[torch.Tensor], torch.Tensor],
                 views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``net`` on view 1 and view 2: in one pass over both (``joint``) or one pass per view (``separate``)."""
        if self.views == "joint":
            out1, out2 = net(views).chunk(2)
            return out1, out2
        v1, v2 = views.chunk(2)
        return net(v1), net(v2)

    def after_step(self) -> None:
        """Hook after each optimiser step (BYOL's EMA)."""
