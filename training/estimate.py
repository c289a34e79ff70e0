"""What a run costs: training FLOPs counted by torch, and its duration measured by a few timed steps.

FLOPs are the compute budget (the same on every machine); minutes are what this machine will take,
measured at start-up on a throwaway copy of the model, so they hold for the CPU the run is on.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from zoo.data import CIFAR10_CLASSES, CIFAR10_COUNTS

from .config import TrainConfig
from .hardware import cpu_summary, memory_format, native_bf16

WARN_MINUTES = 240.0  # longer than this on a CPU: a run meant for a GPU (--preset cpu2: 2-3 h with native bf16)
TIMED_STEPS, TIMING_BUDGET_S = 3, 20.0  # after one warm-up step: up to 3 steps, stopping once 20 s have passed
CLASSES = len(CIFAR10_CLASSES)
TRAIN_PER_CLASS = CIFAR10_COUNTS["train"] // CLASSES


def images(per_class: int | None) -> int:
    """Images of a CIFAR-10 subset of ``per_class`` images per class (None: the whole split)."""
    return CLASSES * (per_class or TRAIN_PER_CLASS)


def steps_per_epoch(cfg: TrainConfig, num_images: int | None = None) -> int:
    """Optimiser steps in one epoch of ``cfg`` on ``num_images`` training images (None: CIFAR-10's, per ``cfg``)."""
    n = images(cfg.train_per_class) if num_images is None else num_images
    return n // cfg.batch_size if cfg.drop_last else math.ceil(n / cfg.batch_size)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` (convolutions and matrix products, forward and backward) as torch's
    FlopCounterMode counts them, on fake tensors: nothing is computed."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def step_flops(method: torch.nn.Module, shapes: list[tuple[int, ...]]) -> int:
    """Training FLOPs of one step of ``method`` on inputs of ``shapes`` (global views, then local crops)."""
    model = copy.deepcopy(method).train()

    def step() -> None:
        model(*(torch.empty(shape) for shape in shapes)).backward()

    return count_flops(step)


def epoch_flops(cfg: TrainConfig, method: torch.nn.Module, num_images: int | None = None) -> list[int]:
    """Training FLOPs of each epoch of ``cfg`` on ``num_images`` training images (None: CIFAR-10's, per ``cfg``;
    every step on the global batch; evaluation not included)."""
    from .views import ViewMaker

    views, per_step = ViewMaker(cfg), {}
    flops = []
    for epoch in range(cfg.epochs):
        shapes = views.shapes(cfg.batch_size, epoch)
        key = tuple(shapes)
        if key not in per_step:
            per_step[key] = step_flops(method, shapes)
        flops.append(per_step[key] * steps_per_epoch(cfg, num_images))
    return flops


def run_flops(cfg: TrainConfig, method: torch.nn.Module) -> int:
    """Training FLOPs of the whole run of ``cfg``."""
    return sum(epoch_flops(cfg, method))


@dataclass(frozen=True)
class Projection:
    """A run's projected duration from measured rates: training FLOP/s (and the views/s of its first
    remaining epoch) and evaluated images/s."""

    views_per_s: float
    eval_images_per_s: float
    train_minutes: float
    monitor_minutes: float
    final_minutes: float

    @property
    def minutes(self) -> float:
        return self.train_minutes + self.monitor_minutes + self.final_minutes


def _timed(step: Callable[[], Any], sync: Callable[[], None]) -> float:
    """Seconds per call of ``step`` after one warm-up call: up to TIMED_STEPS calls within TIMING_BUDGET_S."""
    step()
    sync()
    start, calls = time.perf_counter(), 0
    while calls < TIMED_STEPS and (calls == 0 or time.perf_counter() - start < TIMING_BUDGET_S):
        step()
        calls += 1
    sync()
    return (time.perf_counter() - start) / calls


def measure_step_seconds(method: torch.nn.Module, cfg: TrainConfig, device: torch.device, precision: str,
                         batch_size: int, epoch: int, train_step: Callable[..., Any]) -> float:
    """Seconds of one ``train_step`` of ``epoch`` (augmentation included) on a throwaway copy of ``method`` with
    this process's ``batch_size``: the run's weights, optimiser and random streams are left untouched."""
    from .optim import build_optimizer
    from .views import ViewMaker

    model = copy.deepcopy(method).to(device)
    optimizer = build_optimizer(model, cfg)
    generator = torch.Generator(device).manual_seed(0)
    side = cfg.image_size
    images = torch.randint(0, 256, (batch_size, side, side, 3), dtype=torch.uint8, generator=generator, device=device)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16")
    fmt = memory_format(precision)
    model.to(memory_format=fmt)
    make_views = ViewMaker(cfg, fmt)

    def step() -> None:
        train_step(model, model, optimizer, make_views(images, generator, epoch), autocast, 0.0)

    return _timed(step, _sync(device))


def measure_eval_images_per_s(encoder: torch.nn.Module, device: torch.device, image_size: int = 32,
                              batch_size: int = 512) -> float:
    """Images/s of the frozen encoder's forward pass (fp32, eval mode) on ``image_size`` images, as the probes run it."""
    model = copy.deepcopy(encoder).to(device).eval()
    x = torch.rand(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device)

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    return batch_size / _timed(forward, _sync(device))


def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


@dataclass(frozen=True)
class DataSizes:
    """Images a run trains on per epoch, evaluates per epoch (the monitor) and at the end (the final probes)."""

    train: int
    monitor: int
    final: int


def project(cfg: TrainConfig, flops: list[int], step_seconds: float, first_epoch: int,
            eval_images_per_s: float, sizes: DataSizes) -> Projection:
    """The run's minutes from ``first_epoch`` on: each epoch's training FLOPs (``flops``) at the FLOP rate of
    the measured step (``step_seconds``, in ``first_epoch``), the per-epoch monitor and the final probes at the
    measured evaluation rate."""
    steps = steps_per_epoch(cfg, sizes.train)
    flops_per_s = flops[first_epoch] / steps / step_seconds
    epochs_left = cfg.epochs - first_epoch
    monitor, final = epochs_left * sizes.monitor, sizes.final
    views = (2 + cfg.local_crops) * cfg.batch_size
    return Projection(views / step_seconds, eval_images_per_s, sum(flops[first_epoch:]) / flops_per_s / 60,
                      monitor / eval_images_per_s / 60, final / eval_images_per_s / 60)


def duration(minutes: float) -> str:
    """``40 s`` / ``12 minutes`` / ``3.4 hours``."""
    if minutes < 1:
        return f"{minutes * 60:.0f} s"
    return f"{minutes:.0f} minutes" if minutes < 90 else f"{minutes / 60:.1f} hours"


def flops_text(flops: float) -> str:
    """``81.2 GFLOP`` / ``1.06 PFLOP``."""
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops:.3g} FLOP"


def start_report(cfg: TrainConfig, projection: Projection, precision: str, device: torch.device,
                 epochs_left: int, flops: int) -> str:
    """The line a run prints before it starts: measured speed, projected time and the run's training FLOPs."""
    where = cpu_summary() if device.type == "cpu" else str(device)
    return (f"{cfg.method}: {projection.views_per_s:,.0f} training views/s measured on {where} in {precision}; "
            f"projected {duration(projection.minutes)} for {epochs_left} epoch(s) (training "
            f"{duration(projection.train_minutes)}, monitor {duration(projection.monitor_minutes)}, final probes "
            f"{duration(projection.final_minutes)}); {flops_text(flops)} of training in all")


def long_run_warning(cfg: TrainConfig, projection: Projection, device: torch.device, num_images: int) -> str | None:
    """A warning when the projected run is longer than WARN_MINUTES on a CPU: a recipe meant for a GPU."""
    if device.type != "cpu" or projection.minutes <= WARN_MINUTES:
        return None
    return (f"warning: this run ({cfg.epochs} epochs of {num_images:,} images, width {cfg.width}) "
            f"is projected to take {duration(projection.minutes)} on this CPU. Runs this long, like the default "
            f"preset `seed`, are for a GPU: on a CPU use --preset cpu2 (the zoo's CPU recipe), --preset quick "
            f"(minutes) or --preset smoke (under a minute). Starting anyway; stop it with Ctrl-C.")


def emulated_bf16_warning(bf16_views_per_s: float, fp32_views_per_s: float) -> str | None:
    """A warning for ``--precision bf16`` on a CPU that emulates bf16, with both measured speeds."""
    if native_bf16():
        return None
    return (f"warning: --precision bf16 on a CPU without native bf16 ({cpu_summary()}): bf16 is emulated here, "
            f"{bf16_views_per_s:,.0f} training views/s against {fp32_views_per_s:,.0f} in fp32 (measured: "
            f"{fp32_views_per_s / bf16_views_per_s:.1f}x). Use --precision auto (fp32 on this CPU) unless you need "
            f"bf16's rounding.")
