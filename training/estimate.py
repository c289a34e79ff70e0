"""How long a run would take on a CPU, from measured throughput, to warn before a GPU recipe starts there."""

from __future__ import annotations

import math

import numpy as np

from .config import TrainConfig, build_config

# SimCLR training step, views/s by ResNet-18 width, bf16 autocast on this project's 2-core CPU with AMX
# (benchmarks/training_speed.py); other widths: piecewise power law through these points (log-log linear).
CPU_VIEWS_PER_S = {16: 950.0, 32: 340.0, 64: 100.0}
FP32_SLOWDOWN = 3.0  # fp32 (--precision auto on a CPU) against bf16 on the same CPU
EVAL_COST = 1 / 3  # an evaluated image (forward only) against a trained view (forward and backward)
WARN_MINUTES = 120.0  # above the `cpu` preset's ~100 minutes: a run meant for a GPU
CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS = 10, 5000, 1000  # CIFAR-10


def _images(per_class: int | None, full: int = TRAIN_PER_CLASS) -> int:
    return CLASSES * (per_class or full)


def cpu_minutes(cfg: TrainConfig) -> float:
    """Estimated minutes of ``cfg`` on a 2-core CPU: training views, the per-epoch monitor and the final probes."""
    widths, rates = np.log(list(CPU_VIEWS_PER_S)), np.log(list(CPU_VIEWS_PER_S.values()))
    x = math.log(cfg.width)
    i = min(max(int(np.searchsorted(widths, x)), 1), len(widths) - 1)  # the segment holding x, or the nearest end one
    views_per_s = math.exp(rates[i - 1] + (rates[i] - rates[i - 1]) / (widths[i] - widths[i - 1]) * (x - widths[i - 1]))
    views_per_s /= 1.0 if cfg.precision == "bf16" else FP32_SLOWDOWN
    train_views = 2 * _images(cfg.train_per_class) * cfg.epochs
    monitor = cfg.epochs * (_images(cfg.eval_train_per_class) + _images(cfg.eval_test_per_class, TEST_PER_CLASS))
    final = _images(cfg.final_train_per_class) + _images(None, TEST_PER_CLASS)
    return (train_views + EVAL_COST * (monitor + final)) / views_per_s / 60


def _duration(minutes: float) -> str:
    return f"{minutes:.0f} minutes" if minutes < 90 else f"{minutes / 60:.0f} hours"


def cpu_duration_warning(cfg: TrainConfig) -> str | None:
    """A warning naming the estimated duration and a CPU preset when ``cfg`` would run over
    ``WARN_MINUTES`` on a CPU; ``None`` when it is short enough."""
    minutes = cpu_minutes(cfg)
    if minutes <= WARN_MINUTES:
        return None
    cpu_preset, quick = (cpu_minutes(build_config(cfg.method, preset, None, {})) for preset in ("cpu", "quick"))
    bf16 = cfg.precision == "bf16"
    faster = "" if bf16 else f"; --precision bf16: about {_duration(minutes / FP32_SLOWDOWN)} on CPUs with AMX"
    return (f"warning: this run ({cfg.epochs} epochs of {_images(cfg.train_per_class):,} images, width {cfg.width}, "
            f"{'bf16' if bf16 else 'fp32'}) would take about {_duration(minutes)} on a 2-core CPU (estimated from "
            f"measured throughput{faster}). Runs this long, like the default preset `seed`, are for a GPU: on a CPU "
            f"use --preset cpu (the zoo's CPU recipe, about {_duration(cpu_preset)}), --preset quick (about "
            f"{_duration(quick)}) or --preset smoke (under a minute). Starting anyway; "
            f"stop it with Ctrl-C.")
