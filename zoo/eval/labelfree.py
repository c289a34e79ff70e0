"""Label-free measures of an embedding, for data without labels: RankMe (the effective rank of the features;
Garrido et al., ICML 2023) and alignment / uniformity (Wang & Isola, ICML 2020). Each is a small function
of feature tensors, so each is tested on its own; ``label_free`` computes all three for an encoder.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .probes import extract_features

RANKME_EPS = 1e-7  # the paper's epsilon in p_k = sigma_k / ||sigma||_1 + eps
UNIFORMITY_ROWS = 4096  # uniformity over the first rows only: all pairs of 4,096 are 8.4 million distances
PROTOCOL = {"rankme": "exp(entropy of the normalised singular values) of the raw features, eval mode "
                      "(Garrido et al. 2023); at most the feature dimension",
            "alignment": "mean squared distance between the L2-normalised features of two augmented views of "
                         "each image (Wang & Isola 2020, alpha 2): lower is better",
            "uniformity": "log of the mean of exp(-2 squared distance) over all pairs of L2-normalised features "
                          "(Wang & Isola 2020, t 2): lower is more uniform"}


def rankme(features: torch.Tensor, eps: float = RANKME_EPS) -> float:
    """RankMe of ``(N, D)`` features: exp of the entropy of their singular values normalised to sum 1."""
    if features.ndim != 2 or min(features.shape) < 1:
        raise ValueError(f"rankme needs (N, D) features with N, D >= 1, got shape {tuple(features.shape)}")
    sigma = torch.linalg.svdvals(features.double())
    p = sigma / sigma.sum().clamp_min(torch.finfo(torch.float64).tiny) + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


def alignment(a: torch.Tensor, b: torch.Tensor, alpha: float = 2.0) -> float:
    """Mean ``||f(x) - f(y)||^alpha`` over positive pairs (row ``i`` of ``a`` and of ``b``), features L2-normalised."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"alignment needs two (N, D) feature tensors of one shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    return float((F.normalize(a.double(), dim=1) - F.normalize(b.double(), dim=1)).norm(dim=1).pow(alpha).mean())


def uniformity(x: torch.Tensor, t: float = 2.0) -> float:
    """``log mean exp(-t ||f(x) - f(y)||^2)`` over all pairs of distinct rows, features L2-normalised."""
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"uniformity needs (N, D) features with N >= 2, got shape {tuple(x.shape)}")
    sq = torch.pdist(F.normalize(x.double(), dim=1)).pow(2)
    return float(torch.logsumexp(-t * sq, 0) - torch.log(torch.tensor(float(len(sq)), dtype=torch.float64)))


def label_free(encoder: nn.Module, images: Any, view_a: torch.Tensor, view_b: torch.Tensor,
               device: str | torch.device | None = None) -> dict[str, Any]:
    """RankMe and uniformity of ``encoder``'s features of ``images`` (uint8 ``(N, H, W, 3)`` or float), and the
    alignment of two augmented views of the same images (float ``(M, 3, S, S)``, row ``i`` of each a pair);
    with each one's protocol and sample sizes under ``protocol``."""
    feats = extract_features(encoder, images, device=device, progress=False)
    pairs = extract_features(encoder, torch.cat([view_a, view_b]), device=device, progress=False)
    return {"rankme": rankme(feats), "alignment": alignment(pairs[:len(view_a)], pairs[len(view_a):]),
            "uniformity": uniformity(feats[:UNIFORMITY_ROWS]),
            "protocol": {"images": len(feats), "pairs": len(view_a), "uniformity_images": min(len(feats), UNIFORMITY_ROWS), "feature_dim": feats.shape[1], **PROTOCOL}}
