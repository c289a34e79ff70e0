"""The three methods' losses, as plain functions of projections (distributed-aware, always fp32).

Under torchrun each rank passes its local batch; the functions gather or all-reduce what
the loss needs so that the value equals the single-process loss on the global batch.
Each runs with autocast off on float32 (or float64) inputs: under bf16 autocast a matmul
re-casts even ``.float()`` inputs to bf16, which near convergence (C_ii ~ 0.999, aligned
pairs) loses the loss and its gradients in rounding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .distributed import all_gather_cat, all_reduce_sum, world


def _in_fp32(loss: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Run ``loss`` with autocast disabled, its tensor arguments promoted to at least float32."""

    @functools.wraps(loss)
    def fp32_loss(*args, **kwargs) -> torch.Tensor:
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        with torch.autocast(device_type=tensors[0].device.type, enabled=False):
            return loss(*(a.to(torch.promote_types(a.dtype, torch.float32)) if isinstance(a, torch.Tensor) else a
                          for a in args), **kwargs)

    return fp32_loss


@_in_fp32
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent: for each of the 2N views, cross-entropy of its positive (the other
    view of the same image) against the other 2N - 2 views as negatives, cosine similarity
    over ``temperature``, averaged over the 2N views. Negatives come from every rank."""
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    rank, _ = world()
    n = len(z1)
    keys = torch.cat([all_gather_cat(z1), all_gather_cat(z2)])  # (2N, d): view-1 block, view-2 block
    big_n = len(keys) // 2
    logits = torch.cat([z1, z2]) @ keys.T / temperature
    own = torch.arange(n, device=z1.device) + rank * n
    self_idx = torch.cat([own, own + big_n])
    positive = torch.cat([own + big_n, own])
    logits[torch.arange(2 * n, device=z1.device), self_idx] = float("-inf")
    return F.cross_entropy(logits, positive)


@_in_fp32
def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss ``2 - 2 cos(p, z)``, averaged over the batch (z is the target).
    Computed as ``||p/|p| - z/|z|||^2`` (the same value), which keeps its precision near convergence."""
    return (F.normalize(p, dim=1, eps=1e-8) - F.normalize(z.detach(), dim=1, eps=1e-8)).pow(2).sum(1).mean()


def _standardise(z: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, int]:
    """Per-dimension standardisation over the global batch, as the seed notebook: ``(z - mean) /
    sqrt(var + eps)`` with the UNBIASED variance (``torch.var``: divided by the global count - 1).
    Every rank holds the same number of samples (the loop splits the global batch evenly)."""
    count = len(z) * world()[1]
    mean = all_reduce_sum(z.sum(0)) / count
    var = all_reduce_sum(((z - mean) ** 2).sum(0)) / (count - 1)
    return (z - mean) / torch.sqrt(var + eps), count


@_in_fp32
def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 0.005) -> torch.Tensor:
    """Barlow Twins: standardise each view per dimension over the batch (unbiased variance,
    eps 1e-5), C = z1^T z2 / N, loss = sum_i (1 - C_ii)^2 + alpha * sum_{i != j} C_ij^2.
    C is all-reduced over ranks."""
    z1, n = _standardise(z1)
    z2, _ = _standardise(z2)
    c = all_reduce_sum(z1.T @ z2) / n
    d = len(c)
    off_diagonal = c.flatten()[:-1].view(d - 1, d + 1)[:, 1:]  # summed directly: no cancellation near C = I
    return (1 - torch.diagonal(c)).pow(2).sum() + alpha * off_diagonal.pow(2).sum()


@_in_fp32
def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_weight: float = 25.0, var_weight: float = 25.0,
                cov_weight: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg (Bardes et al., 2022): ``sim_weight`` x mean squared distance between the views, plus for each
    view ``var_weight`` x the mean hinge ``relu(1 - sqrt(var + eps))`` of each dimension's standard deviation
    and ``cov_weight`` x the sum of squared off-diagonal covariances / d. Variance and covariance are taken
    over the global batch (every rank's rows, gradients flowing back to each)."""
    invariance = F.mse_loss(z1, z2)
    regularisers = [_variance_covariance(all_gather_cat(z), eps) for z in (z1, z2)]
    return (sim_weight * invariance + var_weight * sum(v for v, _ in regularisers)
            + cov_weight * sum(c for _, c in regularisers))


def _variance_covariance(z: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """VICReg's two regularisers of one view's projections ``z`` (N, d): std hinge, off-diagonal covariance."""
    n, d = z.shape
    z = z - z.mean(0)
    std = torch.sqrt(z.var(0) + eps)
    cov = z.T @ z / (n - 1)
    off_diagonal = cov.flatten()[:-1].view(d - 1, d + 1)[:, 1:]
    return F.relu(1 - std).mean(), off_diagonal.pow(2).sum() / d
