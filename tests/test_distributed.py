"""DistributedDataParallel on CPU (gloo, 2 processes): the loss and gradients on the global batch equal the
single-process ones on the same batch, for every method in both view modes; a torchrun run follows the
single-process run of the same command.

The gradient comparison runs in float64. At random init a ReLU input can lie within float32 rounding of
zero, where ReLU has no derivative: this fixture has one (|x| < 1e-6, layer4.0, the same for every method
with joint views), and which side of zero float32 puts it on depends on the kernels' summation order,
which differs between CPUs (AVX2 and AVX-512) and between torch's BatchNorm and GlobalBatchNorm. One
flipped ReLU moves the encoder's gradients by 1-4 %, so a float32 comparison tests the CPU, not the
collectives; in float64 the same test holds to 1e-9.
"""

import json
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel

from conftest import free_port, needs_cifar10
from training.distributed import GlobalBatchNorm, convert_batchnorm
from training.methods import METHODS, VIEWS
from zoo import build_encoder

WORLD = 2
GRAD_RTOL = 1e-9  # float64: rounding is ~1e-16 per operation; the gradients pass ~100 operations deep


def _method(name: str, views: str) -> torch.nn.Module:
    torch.manual_seed(0)
    encoder = build_encoder({"architecture": "resnet18_cifar", "kwargs": {"width": 4}})
    return METHODS[name](encoder, 32, 16, views=views).double()


def _views(n: int = 8) -> torch.Tensor:
    return torch.rand(2 * n, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _local(views: torch.Tensor, rank: int) -> torch.Tensor:
    v1, v2 = views.chunk(2)
    n = len(v1) // WORLD
    return torch.cat([v1[rank * n:(rank + 1) * n], v2[rank * n:(rank + 1) * n]])


def _worker(rank: int, name: str, views: str, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    model = DistributedDataParallel(convert_batchnorm(_method(name, views)))
    loss = model(_local(_views(), rank))
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    if rank == 0:
        grads = {k: p.grad for k, p in model.module.named_parameters() if p.grad is not None}
        save_file({"loss": mean_loss / WORLD, **{f"grad.{k}": v for k, v in grads.items()}}, out)
    dist.destroy_process_group()


@pytest.mark.parametrize("name, views", [(name, views) for name in METHODS for views in VIEWS])
def test_ddp_loss_and_gradients_equal_single_process(name, views, tmp_path):
    out = str(tmp_path / "ddp.safetensors")
    mp.spawn(_worker, args=(name, views, free_port(), out), nprocs=WORLD, join=True)
    ddp = load_file(out)
    single = _method(name, views)
    loss = single(_views())
    loss.backward()
    torch.testing.assert_close(ddp["loss"], loss.detach(), rtol=1e-12, atol=1e-12)
    grads = {k: p.grad for k, p in single.named_parameters() if p.grad is not None}
    assert set(ddp) - {"loss"} == {f"grad.{k}" for k in grads}  # every parameter with a gradient, and only those
    # Relative to the gradient's norm, floored at 1e-6 of the largest one: the biases that feed a BatchNorm
    # have an exactly zero gradient, of which both sides hold only rounding.
    floor = 1e-6 * max(g.norm() for g in grads.values())
    errors = {k: ((ddp[f"grad.{k}"] - g).norm() / torch.clamp(g.norm(), min=floor)).item() for k, g in grads.items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= GRAD_RTOL, f"worst parameter {worst}: relative error {errors[worst]:.3g}"


def test_global_batchnorm_keeps_dtype_and_handles_layers_without_running_stats():
    layer = torch.nn.BatchNorm2d(3, track_running_stats=False, affine=False).double()
    converted = convert_batchnorm(torch.nn.Sequential(layer))[0]
    assert isinstance(converted, GlobalBatchNorm) and converted.running_mean is None
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(converted(x), layer(x))  # one process: exactly F.batch_norm
    with_stats = convert_batchnorm(torch.nn.BatchNorm1d(5).double())
    assert with_stats.weight.dtype == with_stats.running_mean.dtype == torch.float64


def _train(tmp_path, name: str, torchrun: bool) -> tuple[list[float], dict[str, torch.Tensor]]:
    out = tmp_path / name
    flags = ["train", "byol", "--preset", "smoke", "--precision", "fp32", "--epochs", "2", "--train-per-class", "13",
             "--out", str(out)]  # 130 images: 2 steps of 64 per epoch
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--master_port",
                 str(free_port()), "-m", "training"] if torchrun else [sys.executable, "-m", "training"])
    proc = subprocess.run(launcher + flags, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if torchrun:
        assert proc.stdout.count("byol epoch 1/2") == 1  # only rank 0 reports and writes
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return losses, load_file(out / "model.safetensors")


@needs_cifar10
def test_torchrun_run_follows_the_single_process_run_of_the_same_command(tmp_path):
    """BYOL (joint views, the case that once went wrong), 2 epochs of 2 steps, one process against two.

    Only the order of float32 sums may differ, and training amplifies that quickly. Measured on this
    test's command (Zen 4): 1 thread against 2 moves the epoch losses by 3e-6 / 2e-4 and the encoder by
    2e-4 of its norm; torchrun by 2e-6 / 6e-4 and 1.5e-3. A torchrun job with per-rank BatchNorm statistics
    or per-rank augmentation moves them by >= 3e-3 / 8e-3 and 3.5e-2. The tolerances sit between.
    """
    single_losses, single_weights = _train(tmp_path, "single", torchrun=False)
    ddp_losses, ddp_weights = _train(tmp_path, "ddp", torchrun=True)
    assert len(single_losses) == len(ddp_losses) == 2
    assert ddp_losses[0] == pytest.approx(single_losses[0], rel=1e-4)
    assert ddp_losses[1] == pytest.approx(single_losses[1], rel=3e-3)
    assert single_weights.keys() == ddp_weights.keys()
    keys = [k for k, v in single_weights.items() if v.is_floating_point()]
    diff = sum((ddp_weights[k].double() - single_weights[k].double()).pow(2).sum() for k in keys).sqrt()
    norm = sum(single_weights[k].double().pow(2).sum() for k in keys).sqrt()
    assert diff / norm <= 1e-2, f"encoder weights differ by {diff / norm:.3g} of their norm"
