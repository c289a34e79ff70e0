"""torchrun support: process group set-up, gradient-carrying collectives, global BatchNorm.

Every helper is the identity in a single process, so the methods' code has one path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0


def init_distributed(device: str) -> DistEnv:
    """Join torchrun's process group when ``WORLD_SIZE > 1`` (nccl on CUDA, gloo on CPU)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistEnv(device=torch.device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    dev = torch.device("cuda", local_rank) if device == "cuda" else torch.device("cpu")
    return DistEnv(dist.get_rank(), dist.get_world_size(), dev)


def world() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks; the backward pass sums the gradients over ranks too."""
    return dist_fn.all_reduce(x) if world()[1] > 1 else x


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x`` (same shape) along dim 0, gradients flowing back to each rank.

    Built on all_reduce (each rank writes its block into zeros) because gloo lacks the
    reduce-scatter that torch's differentiable all_gather needs in its backward pass.
    """
    rank, size = world()
    if size == 1:
        return x
    blocks = [torch.zeros_like(x) for _ in range(size)]
    blocks[rank] = x
    return all_reduce_sum(torch.cat(blocks))


class GlobalBatchNorm(nn.BatchNorm1d):
    """BatchNorm whose training statistics span the global batch over all ranks.

    Hand-written because ``nn.SyncBatchNorm`` rejects CPU tensors (gloo); works for any
    input rank (N, C, ...). In a single process it is exactly ``F.batch_norm``.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world()[1] == 1:
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        c = x.shape[1]
        n = x.numel() // c * world()[1]  # every rank holds the same number of samples
        stats = all_reduce_sum(torch.cat([x.float().sum(dims), (x.float() ** 2).sum(dims)]))
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean**2).clamp_min(0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * n / (n - 1), self.momentum)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape).to(x.dtype)) * torch.rsqrt(var + self.eps).view(shape).to(x.dtype)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer by a ``GlobalBatchNorm`` holding the same parameters and stats."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats, device=module.running_mean.device)
        new.load_state_dict(module.state_dict())
        if module.affine:  # keep frozen layers (BYOL's target) frozen
            new.requires_grad_(module.weight.requires_grad)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_batchnorm(child))
    return module


__all__ = ["DistEnv", "GlobalBatchNorm", "all_gather_cat", "all_reduce_sum", "convert_batchnorm",
           "init_distributed", "world"]
