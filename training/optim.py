"""Optimisers (AdamW, SGD, LARS) and learning-rate schedules, chosen by name in the training config."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from .config import TrainConfig

SCHEDULES = ("constant", "epoch-warmup-cosine", "step-warmup-cosine")
OPTIMIZERS = ("adamw", "sgd", "lars")
MOMENTUM = 0.9  # sgd and lars
LARS_ETA = 0.02  # solo-learn's and lightly's CIFAR setting


def lr_at(cfg: TrainConfig, epoch: int, step: int, steps: int) -> float:
    """The learning rate for ``step`` (0-based) of ``epoch`` with ``steps`` steps per epoch.

    ``constant``: ``cfg.lr``. ``epoch-warmup-cosine`` (the seed's LambdaLR, stepped once per
    epoch): ``(e + 1) / W`` for epoch ``e < W``, then ``0.5 (1 + cos(pi (e - W) / (E - W)))``.
    ``step-warmup-cosine``: the same curve evaluated per step (warm-up over ``W * steps`` steps,
    cosine to zero at the last step).
    """
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "epoch-warmup-cosine":
        position, warmup, total = epoch, cfg.warmup_epochs, cfg.epochs
    else:
        position, warmup, total = epoch * steps + step, cfg.warmup_epochs * steps, cfg.epochs * steps
    if position < warmup:
        return cfg.lr * (position + 1) / warmup
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (position - warmup) / max(1, total - warmup)))


class LARS(torch.optim.Optimizer):
    """SGD with momentum and LARS's layer-wise trust ratio, clipped, as in solo-learn and lightly.

    In a group with ``adapt=True`` the gradient becomes ``(g + wd p) * min(eta ||p|| / (||g|| +
    wd ||p|| + eps) / lr, 1)`` (1 where ``||p||`` or ``||g||`` is 0); a group with ``adapt=False``
    (biases, BatchNorm) gets plain momentum SGD with its own weight decay (0 by ``build_optimizer``).
    Then ``buf = momentum buf + g``, ``p -= lr buf``. Hand-written: torch has no LARS, and the
    libraries that do (timm, lightly) would add a large dependency for these lines.
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = MOMENTUM, weight_decay: float = 0.0,
                 eta: float = LARS_ETA, eps: float = 1e-8) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta,
                                  "eps": eps, "adapt": True})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One update of every parameter that has a gradient; returns ``closure()``'s loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.add(p, alpha=group["weight_decay"])
                if group["adapt"]:
                    p_norm, g_norm = p.norm(), p.grad.norm()
                    trust = group["eta"] * p_norm / (g_norm + group["weight_decay"] * p_norm + group["eps"])
                    trust = (trust / group["lr"]).clamp(max=1.0)
                    grad.mul_(torch.where((p_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust)))
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over the trainable parameters: ``adamw`` (the seed's) and ``sgd`` (momentum
    0.9, no Nesterov) decay every parameter; ``lars`` excludes biases and BatchNorm parameters (1-D)
    from weight decay and from the trust ratio."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=MOMENTUM, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "lars":
        return LARS([{"params": [p for p in params if p.ndim > 1]},
                     {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "adapt": False}],
                    lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose one of {OPTIMIZERS}")
