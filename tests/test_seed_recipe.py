"""``--preset seed`` is the seed notebook's recipe: each check compares the code under test with an
independent transcription of the notebook's own code (optimiser, LambdaLR, forward passes, losses, EMA)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from training.augment import BatchAugment
from training.config import build_config
from training.loop import build_method, epoch_batches
from training.optim import build_optimizer, lr_at

SMALL = {"width": 4, "proj_hidden": 32, "proj_out": 16}  # the notebook's modules, scaled down for speed


# --- the notebook's code, transcribed -------------------------------------------------------------

def notebook_simclr_lrs(epochs=50, warmup_epochs=10):
    """The lr of each epoch from the notebook's AdamW + LambdaLR, stepped once per epoch."""
    def lr_lambda(epoch):
        if epoch < warmup_epochs:
            return (epoch + 1) / float(warmup_epochs)
        t = (epoch - warmup_epochs) / float(epochs - warmup_epochs)
        return 0.0 + 0.5 * (1 - 0.0) * (1 + math.cos(math.pi * t))

    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=0.6, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def notebook_normalize(x, eps=1e-8):
    return x / (x.norm(dim=-1, keepdim=True) + eps)


def notebook_nt_xent(z1, z2, tau=0.5):
    b = z1.shape[0]
    z = torch.cat([z1, z2], dim=0)
    sim = (z @ z.t()) / tau
    sim.masked_fill_(torch.eye(2 * b, dtype=torch.bool), -1e9)
    targets = torch.arange(b)
    return F.cross_entropy(sim, torch.cat([targets + b, targets], dim=0))


def notebook_barlow_loss(z1, z2, alpha, eps=1e-5):
    b, d = z1.shape
    z1 = (z1 - z1.mean(dim=0, keepdim=True)) / torch.sqrt(z1.var(dim=0, keepdim=True) + eps)
    z2 = (z2 - z2.mean(dim=0, keepdim=True)) / torch.sqrt(z2.var(dim=0, keepdim=True) + eps)
    c = z1.T @ z2 / b
    off_diagonal = c.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()
    return torch.diagonal(c).add(-1).pow(2).sum() + alpha * off_diagonal.pow(2).sum()


def notebook_simclr_step_loss(m, x1, x2):
    proj1 = notebook_normalize(m.projector(m.encoder(x1)))
    proj2 = notebook_normalize(m.projector(m.encoder(x2)))
    return notebook_nt_xent(proj1, proj2, tau=0.5)


def notebook_byol_step_loss(m, x1, x2):
    pred_online = F.normalize(m.predictor(m.projector(m.encoder(torch.concat([x1, x2], dim=0)))), dim=-1, eps=1e-8)
    with torch.no_grad():
        proj_target = F.normalize(m.target_projector(m.target_encoder(torch.concat([x2, x1], dim=0))), dim=-1, eps=1e-8)
    return (2 - 2 * (pred_online * proj_target.detach()).sum(dim=-1)).mean()


def notebook_barlow_step_loss(m, x1, x2):
    return notebook_barlow_loss(m.projector(m.encoder(x1)), m.projector(m.encoder(x2)), alpha=0.005)


# --- the checks -----------------------------------------------------------------------------------

def test_seed_hyperparameters_are_the_notebooks():
    expected = {"simclr": (0.6, 0.0), "byol": (0.5, 1e-6), "barlowtwins": (0.5, 1e-6)}
    for name, (lr, weight_decay) in expected.items():
        cfg = build_config(name, "seed", None, {})
        assert (cfg.optimizer, cfg.lr, cfg.weight_decay) == ("adamw", lr, weight_decay), name
        assert (cfg.batch_size, cfg.epochs, cfg.width, cfg.proj_hidden, cfg.proj_out) == (256, 50, 64, 2048, 128)
    assert build_config("simclr", "seed", None, {}).method_options == {"temperature": 0.5}
    assert build_config("byol", "seed", None, {}).method_options == {"ema": 0.99, "ema_schedule": "constant"}
    assert build_config("barlowtwins", "seed", None, {}).method_options == {"alpha": 0.005}
    for name in ("simclr", "byol", "barlowtwins"):  # every option beyond the notebook is off
        cfg = build_config(name, "seed", None, {})
        assert (cfg.local_crops, cfg.progressive_epochs, cfg.bn_recalibrate) == (0, 0, False)


def test_seed_learning_rate_per_step_is_the_notebooks():
    steps = 195  # 50,000 // 256
    simclr = build_config("simclr", "seed", None, {})
    for epoch, lr in enumerate(notebook_simclr_lrs()):  # constant within an epoch (LambdaLR steps per epoch)
        assert [lr_at(simclr, epoch, step, steps) for step in (0, 97, 194)] == pytest.approx([lr] * 3, rel=1e-12)
    for name in ("byol", "barlowtwins"):  # the notebook has no scheduler: constant 0.5
        cfg = build_config(name, "seed", None, {})
        assert {lr_at(cfg, e, s, steps) for e in range(50) for s in (0, 194)} == {0.5}


@pytest.mark.parametrize("name", ["simclr", "byol", "barlowtwins"])
def test_seed_optimizer_is_adamw_on_all_trainable_parameters(name):
    cfg = build_config(name, "seed", None, SMALL)
    method, _ = build_method(cfg)
    optimizer = build_optimizer(method, cfg)
    assert type(optimizer) is torch.optim.AdamW
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [(cfg.lr, cfg.weight_decay)]
    online = [p for n, p in method.named_parameters() if not n.startswith("target_")]
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in online}


def test_seed_heads_are_the_notebooks():
    with torch.device("meta"):
        simclr, byol, barlow = (build_method(build_config(n, "seed", None, {}))[0]
                                for n in ("simclr", "byol", "barlowtwins"))

    def layers(head):
        return [(type(m).__name__, getattr(m, "in_features", getattr(m, "num_features", None)),
                 getattr(m, "out_features", None)) for m in head]

    assert layers(simclr.projector) == [("Linear", 512, 2048), ("ReLU", None, None), ("Linear", 2048, 128)]
    bn_head = [("Linear", 512, 2048), ("BatchNorm1d", 2048, None), ("ReLU", None, None), ("Linear", 2048, 128)]
    assert layers(byol.projector) == layers(barlow.projector) == bn_head
    assert layers(byol.predictor) == [("Linear", 128, 2048), ("BatchNorm1d", 2048, None), ("ReLU", None, None),
                                      ("Linear", 2048, 128)]


@pytest.mark.parametrize("name, notebook_loss", [("simclr", notebook_simclr_step_loss),
                                                 ("byol", notebook_byol_step_loss),
                                                 ("barlowtwins", notebook_barlow_step_loss)])
def test_seed_forward_loss_and_gradients_are_the_notebooks(name, notebook_loss):
    """SimCLR and Barlow Twins: one forward per view (BatchNorm statistics per view); BYOL: online on
    cat[x1, x2] against the target on cat[x2, x1], loss averaged over the 2N rows."""
    torch.manual_seed(0)
    method, _ = build_method(build_config(name, "seed", None, SMALL))
    method.double().train()  # float64: gradients of biases that feed a BatchNorm are ~0, not rounding noise
    if name == "byol":  # a target that differs from the online network, as after some training
        with torch.no_grad():
            for p in [*method.target_encoder.parameters(), *method.target_projector.parameters()]:
                p.add_(0.05 * torch.randn_like(p))
    x1, x2 = torch.rand(2, 8, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def loss_and_grads(fn):
        method.zero_grad()
        loss = fn()
        loss.backward()
        return loss.detach(), {k: p.grad.clone() for k, p in method.named_parameters() if p.grad is not None}

    ours, our_grads = loss_and_grads(lambda: method(torch.cat([x1, x2])))
    theirs, their_grads = loss_and_grads(lambda: notebook_loss(method, x1, x2))
    torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-10)
    assert our_grads.keys() == their_grads.keys()
    for k, g in their_grads.items():
        assert (our_grads[k] - g).norm() <= 1e-6 * g.norm() + 1e-12, k


def test_seed_byol_ema_is_the_notebooks():
    """After each step every target parameter becomes 0.99 target + 0.01 online (parameters only)."""
    torch.manual_seed(0)
    method, _ = build_method(build_config("byol", "seed", None, SMALL))
    with torch.no_grad():
        for p in [*method.encoder.parameters(), *method.projector.parameters()]:
            p.add_(torch.randn_like(p))
    online = [*method.encoder.parameters(), *method.projector.parameters()]
    target = [*method.target_encoder.parameters(), *method.target_projector.parameters()]
    expected = [0.99 * t + (1 - 0.99) * o for o, t in zip(online, target)]
    buffers = {k: b.clone() for k, b in method.target_encoder.named_buffers()}
    method.after_step(0.5)
    for got, want in zip(target, expected):
        torch.testing.assert_close(got, want)
    assert all(torch.equal(b, buffers[k]) for k, b in method.target_encoder.named_buffers())


def test_notebook_data_order_is_an_option():
    """Default: a fresh permutation every epoch, no partial batch; shuffle/drop_last false is the notebook's loader."""
    notebook = build_config("simclr", "seed", None, {"shuffle": False, "drop_last": False, "batch_size": 256})
    got = epoch_batches(1000, notebook, epoch=0)
    assert [b.tolist() for b in got] == [b.tolist() for b in DataLoader(range(1000), batch_size=256)]
    ours = build_config("simclr", "seed", None, {})
    e0, e1 = epoch_batches(1000, ours, 0), epoch_batches(1000, ours, 1)
    assert [len(b) for b in e0] == [256] * 3 and not torch.equal(e0[0], e1[0])
    assert all(torch.equal(a, b) for a, b in zip(e0, epoch_batches(1000, ours, 0)))  # replayable on resume
    assert len(set(torch.cat(e0).tolist())) == 768


def test_views_are_pixels_in_unit_range():
    images = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    views = BatchAugment()(images, torch.Generator().manual_seed(0))
    assert views.dtype == torch.float32 and 0 <= views.min() and views.max() <= 1
