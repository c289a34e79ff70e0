"""The three methods' losses, as plain functions of projections (distributed-aware).

Under torchrun each rank passes its local batch; the functions gather or all-reduce what
the loss needs so that the value equals the single-process loss on the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .distributed import all_gather_cat, all_reduce_sum, world


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


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss ``2 - 2 cos(p, z)``, averaged over the batch (z is the target)."""
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()


def _standardise(z: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, int]:
    """Per-dimension standardisation over the global batch (biased variance, like BatchNorm1d).
    Every rank holds the same number of samples (the loop splits the global batch evenly)."""
    count = len(z) * world()[1]
    mean = all_reduce_sum(z.sum(0)) / count
    var = all_reduce_sum(((z - mean) ** 2).sum(0)) / count
    return (z - mean) / torch.sqrt(var + eps), count


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 0.005) -> torch.Tensor:
    """Barlow Twins: standardise each view per dimension over the batch, C = z1^T z2 / N,
    loss = sum_i (1 - C_ii)^2 + alpha * sum_{i != j} C_ij^2. C is all-reduced over ranks."""
    dtype = torch.promote_types(z1.dtype, torch.float32)  # bf16 under autocast -> float32
    z1, n = _standardise(z1.to(dtype))
    z2, _ = _standardise(z2.to(dtype))
    c = all_reduce_sum(z1.T @ z2) / n
    diag = torch.diagonal(c)
    return (1 - diag).pow(2).sum() + alpha * (c.pow(2).sum() - diag.pow(2).sum())
