"""torchrun support: process group set-up, gradient-carrying collectives, global BatchNorm.

Every helper is the identity in a single process, so the methods' code has one path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as collectives
from torch import nn

from zoo.torchrun import join_process_group


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
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.cuda.set_device(local_rank)
    rank, world_size, _ = join_process_group(backend="nccl" if device == "cuda" else "gloo")
    if world_size == 1:
        return DistEnv(device=torch.device(device))
    dev = torch.device("cuda", local_rank) if device == "cuda" else torch.device("cpu")
    return DistEnv(rank, world_size, dev)


def world() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks; the backward pass sums the gradients over ranks too (torch's functional collective)."""
    if world()[1] == 1:
        return x
    return collectives.wait_tensor(collectives.all_reduce(x.contiguous(), "sum", dist.group.WORLD))


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x`` (same shape) along dim 0, gradients flowing back to each rank."""
    if world()[1] == 1:
        return x
    return collectives.wait_tensor(collectives.all_gather_single(x.contiguous(), 0, dist.group.WORLD))


class GlobalBatchNorm(nn.BatchNorm1d):
    """BatchNorm whose training statistics span the global batch over all ranks.

    Hand-written because ``nn.SyncBatchNorm`` rejects CPU tensors (gloo); works for any
    input rank (N, C, ...). In a single process it is exactly ``F.batch_norm``. The variance
    is taken in two passes (mean, then squared deviations), as torch's own kernels do, so it
    does not lose digits to cancellation when a channel's mean is large against its spread.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world()[1] == 1:
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        n = x.numel() // x.shape[1] * world()[1]  # every rank holds the same number of samples
        xs = x.to(torch.promote_types(x.dtype, torch.float32))
        mean = all_reduce_sum(xs.sum(dims)) / n
        centred = xs - mean.view(shape)
        var = all_reduce_sum(centred.pow(2).sum(dims)) / n
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * n / (n - 1))
        y = (centred * torch.rsqrt(var + self.eps).view(shape)).to(x.dtype)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        """What ``F.batch_norm`` does to the buffers in training: momentum, or a cumulative average without one."""
        self.num_batches_tracked += 1
        momentum = 1 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), momentum)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer by a ``GlobalBatchNorm`` holding the same parameters and stats."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        like = next(iter(module.parameters()), module.running_mean)  # keeps the layer's device and dtype
        factory = {} if like is None else {"device": like.device, "dtype": like.dtype}
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats, **factory)
        new.load_state_dict(module.state_dict())
        if module.affine:  # keep frozen layers (BYOL's target) frozen
            new.requires_grad_(module.weight.requires_grad)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_batchnorm(child))
    return module


__all__ = ["DistEnv", "GlobalBatchNorm", "all_gather_cat", "all_reduce_sum", "convert_batchnorm",
           "init_distributed", "world"]
