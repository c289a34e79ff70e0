"""DistributedDataParallel on CPU (gloo, 2 processes): the loss and gradients on the global
batch equal the single-process ones on the same batch, for all three methods and both view modes."""

import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel

from conftest import free_port, needs_cifar10
from training.distributed import convert_batchnorm
from training.methods import METHODS
from zoo import build_encoder

WORLD = 2


def _method(name: str, views: str) -> torch.nn.Module:
    torch.manual_seed(0)
    encoder = build_encoder({"architecture": "resnet18_cifar", "kwargs": {"width": 4}})
    return METHODS[name](encoder, 32, 16, views=views)


def _views(n: int = 8) -> torch.Tensor:
    return torch.rand(2 * n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


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


# Each method with its seed views (SimCLR, Barlow Twins: one pass per view; BYOL: joint), plus one joint case.
CASES = [(name, method.recipe.views) for name, method in METHODS.items()] + [("barlowtwins", "joint")]


@pytest.mark.parametrize("name, views", CASES)
def test_ddp_loss_and_gradients_equal_single_process(name, views, tmp_path):
    out = str(tmp_path / "ddp.safetensors")
    mp.spawn(_worker, args=(name, views, free_port(), out), nprocs=WORLD, join=True)
    ddp = load_file(out)
    single = _method(name, views)
    loss = single(_views())
    loss.backward()
    torch.testing.assert_close(ddp["loss"], loss.detach(), rtol=1e-5, atol=1e-5)
    checked = 0
    for k, p in single.named_parameters():
        if p.grad is not None:  # relative to the gradient's norm (biases feeding a BatchNorm have ~0 gradient)
            assert (ddp[f"grad.{k}"] - p.grad).norm() <= 1e-3 * p.grad.norm() + 1e-5, f"gradient of {k}"
            checked += 1
    assert checked == len(ddp) - 1  # every parameter with a gradient, and only those, came back


@needs_cifar10
def test_torchrun_smoke_run_writes_one_run_directory(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
         str(free_port()), "-m", "training", "train", "barlowtwins", "--preset", "smoke", "--epochs", "1",
         "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("barlowtwins epoch 1/1") == 1  # only rank 0 reports and writes
    assert {"model.safetensors", "config.json", "results.json", "checkpoint.safetensors"} <= {p.name for p in out.iterdir()}
