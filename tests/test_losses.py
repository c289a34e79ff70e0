import math

import pytest
import torch
import torch.nn.functional as F

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


def barlow_reference(z1, z2, alpha, eps=1e-5):
    """The seed notebook's barlow_loss: unbiased variance (torch.var), eps inside the sqrt, C = z1^T z2 / N."""
    z1 = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0) + eps)
    z2 = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0) + eps)
    c = z1.T @ z2 / len(z1)
    off_diagonal = c - torch.diag(torch.diagonal(c))
    return (1 - torch.diagonal(c)).pow(2).sum() + alpha * off_diagonal.pow(2).sum()


def test_barlow_twins_matches_the_notebook_and_known_values():
    torch.manual_seed(0)
    z1, z2 = torch.randn(16, 6), torch.randn(16, 6)
    torch.testing.assert_close(barlow_twins_loss(z1, z2, 0.005), barlow_reference(z1, z2, 0.005))
    # Identical, decorrelated views (+-1 Hadamard-like columns, biased variance 1): the unbiased
    # standardisation divides by sqrt(8/7 + eps), so C = (7/8) I / (1 + 7 eps / 8) and off-diagonals are 0.
    h = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float32)
    h = torch.cat([h, -h])[:, 1:]  # zero-mean, uncorrelated columns, 8 rows
    c_ii = (7 / 8) / (1 + 7 / 8 * 1e-5)
    assert barlow_twins_loss(h, h, 0.005).item() == pytest.approx(3 * (1 - c_ii) ** 2, rel=1e-4)
    # Scale invariance of the standardisation; an anti-correlated view puts C_ii = -7/8.
    assert barlow_twins_loss(h, -3 * h, 0.0).item() == pytest.approx(3 * (1 + 7 / 8) ** 2, rel=1e-4)


def test_barlow_twins_gradient():
    z1 = torch.randn(8, 3, dtype=torch.double, requires_grad=True)
    z2 = torch.randn(8, 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: barlow_twins_loss(a, b, 0.005), (z1, z2))


def nt_xent_notebook(z1, z2, tau=0.5):
    """The seed notebook's nt_xent on L2-normalised projections (float64 reference)."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    sim = z @ z.T / tau
    sim.masked_fill_(torch.eye(2 * n, dtype=torch.bool), -1e9)
    return F.cross_entropy(sim, torch.cat([torch.arange(n) + n, torch.arange(n)]))


def byol_reference(p, z):
    """The notebook's BYOL loss on one pair of batches (float64 reference; z is the target)."""
    return (2 - 2 * (F.normalize(p, dim=1) * F.normalize(z.detach(), dim=1)).sum(1)).mean()


def _near_convergence(noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(256, 128, generator=g) * 2 + 0.5
    return z1, z1 + noise * torch.randn(256, 128, generator=g)


@pytest.mark.parametrize("name, loss, reference, noise", [
    ("nt_xent", lambda a, b: nt_xent(a, b, 0.5), nt_xent_notebook, 0.01),
    ("byol", byol_loss, byol_reference, 0.01),
    ("barlowtwins", lambda a, b: barlow_twins_loss(a, b, 0.005), lambda a, b: barlow_reference(a, b, 0.005), 0.03),
])
def test_losses_are_fp32_under_bf16_autocast(name, loss, reference, noise):
    """Near convergence (aligned pairs; Barlow Twins' C_ii ~ 0.996) bf16 matmuls lose the value and
    the gradients; the losses must give the fp32 ones whatever the autocast context."""
    z1, z2 = _near_convergence(noise)
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    with torch.autocast("cpu", torch.bfloat16):
        value = loss(a, b)
    value.backward()
    a64, b64 = z1.double().requires_grad_(), z2.double().requires_grad_()
    expected = reference(a64, b64)
    expected.backward()
    assert value.dtype == torch.float32
    assert abs(value.item() - expected.item()) < 1e-4 * abs(expected.item()), name
    for got, want in ((a.grad, a64.grad), (b.grad, b64.grad)):
        if want is None:  # BYOL's target gets no gradient
            assert got is None, name
        else:
            assert (got.double() - want).norm() < 1e-4 * want.norm(), name
