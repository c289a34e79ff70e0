import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.losses import barlow_twins_loss, byol_loss, nt_xent


def nt_xent_reference(z1, z2, t):
    """Direct formula: for every view i, -log(exp(s_ip / t) / sum_{k != i} exp(s_ik / t))."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        sims = [torch.dot(z[i], z[k]) / t for k in range(2 * n) if k != i]
        total = total - (torch.dot(z[i], z[pos]) / t - torch.logsumexp(torch.stack(sims), 0))
    return total / (2 * n)


def test_nt_xent_matches_formula_and_known_values():
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 5), torch.randn(6, 5)
    torch.testing.assert_close(nt_xent(z1, z2, 0.5), nt_xent_reference(z1, z2, 0.5))
    # Identical views of mutually orthogonal images: positive similarity 1, negatives 0.
    e = torch.eye(4)
    expected = -(1 / 0.5 - math.log(math.exp(1 / 0.5) + 6 * math.exp(0)))
    assert nt_xent(e, e, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_gradient():
    z1 = torch.randn(4, 3, dtype=torch.double, requires_grad=True)
    z2 = torch.randn(4, 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.5), (z1, z2))


def test_byol_loss_known_values_and_target_has_no_gradient():
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]], requires_grad=True)
    z = torch.tensor([[2.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], requires_grad=True)  # same, orthogonal, opposite
    loss = byol_loss(p, z)
    assert loss.item() == pytest.approx((0 + 2 + 4) / 3)
    loss.backward()
    assert z.grad is None and p.grad is not None
    a = torch.randn(5, 4, dtype=torch.double, requires_grad=True)
    b = torch.randn(5, 4, dtype=torch.double)
    assert torch.autograd.gradcheck(lambda x: byol_loss(x, b), (a,))


def barlow_reference(z1, z2, alpha):
    bn = nn.BatchNorm1d(z1.shape[1], affine=False).to(z1.dtype)  # standardisation over the batch
    c = bn(z1).T @ bn(z2) / len(z1)
    on = sum((1 - c[i, i]) ** 2 for i in range(len(c)))
    off = sum(c[i, j] ** 2 for i in range(len(c)) for j in range(len(c)) if i != j)
    return on + alpha * off


def test_barlow_twins_matches_formula_and_known_values():
    torch.manual_seed(0)
    z1, z2 = torch.randn(16, 6), torch.randn(16, 6)
    torch.testing.assert_close(barlow_twins_loss(z1, z2, 0.005), barlow_reference(z1, z2, 0.005))
    # Identical, decorrelated views (+-1 Hadamard-like columns): C = I, so the loss is 0.
    h = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float32)
    h = torch.cat([h, -h])[:, 1:]  # zero-mean, unit-variance, uncorrelated columns
    assert barlow_twins_loss(h, h, 0.005).item() == pytest.approx(0.0, abs=1e-4)
    # Scale invariance of the standardisation; an anti-correlated view puts C_ii = -1 (loss 4 per dim).
    assert barlow_twins_loss(h, -3 * h, 0.0).item() == pytest.approx(4.0 * 3, rel=1e-4)


def test_barlow_twins_gradient():
    z1 = torch.randn(8, 3, dtype=torch.double, requires_grad=True)
    z2 = torch.randn(8, 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: barlow_twins_loss(a, b, 0.005), (z1, z2))
