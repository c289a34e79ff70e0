"""Training configuration: the seed's hyperparameters as defaults, presets, file/CLI overrides."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as ``config.json`` in the run directory.

    ``None`` for lr / weight_decay / warmup_epochs means the method's seed default.
    ``*_per_class`` of ``None`` means the full CIFAR-10 split. ``precision``: ``auto`` is bf16
    autocast + channels_last on CUDA and fp32 on CPU; ``bf16`` forces it (fast on CPUs with AMX).
    """

    method: str = "simclr"
    epochs: int = 50
    batch_size: int = 256
    lr: float | None = None
    weight_decay: float | None = None
    warmup_epochs: int | None = None
    width: int = 64
    proj_hidden: int = 2048
    proj_out: int = 128
    temperature: float = 0.5
    ema: float = 0.99
    alpha: float = 0.005
    train_per_class: int | None = None
    eval_train_per_class: int = 500
    eval_test_per_class: int = 100
    final_train_per_class: int | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    log_every: int = 20
    data: str | None = None

    def resolved(self) -> TrainConfig:
        """A copy with the method's seed defaults filled in and values checked."""
        if self.method not in METHOD_DEFAULTS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {sorted(METHOD_DEFAULTS)}")
        values = asdict(self)
        for key, default in METHOD_DEFAULTS[self.method].items():
            if values[key] is None:
                values[key] = default
        cfg = TrainConfig(**values)
        for name in ("epochs", "batch_size", "width", "proj_hidden", "proj_out", "log_every"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
        if cfg.batch_size < 2:
            raise ValueError("batch_size must be at least 2 (contrastive and batch-statistics losses)")
        if cfg.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {cfg.precision!r}")
        if not 0 <= cfg.warmup_epochs <= cfg.epochs:
            raise ValueError(f"warmup_epochs must be in 0..epochs ({cfg.epochs}), got {cfg.warmup_epochs}")
        return cfg


# The seed notebook's per-method hyperparameters (AdamW in all three).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "simclr": {"lr": 0.6, "weight_decay": 0.01, "warmup_epochs": 10},
    "byol": {"lr": 0.5, "weight_decay": 1e-6, "warmup_epochs": 0},
    "barlowtwins": {"lr": 0.5, "weight_decay": 1e-6, "warmup_epochs": 0},
}

PRESETS: dict[str, dict[str, Any]] = {
    # The notebook: full CIFAR-10, ResNet-18, 50 epochs, batch 256. Needs a GPU.
    "seed": {},
    # Proves learning on 2 CPU cores in about 10 minutes per method (benchmarks/presets.py).
    "cpu": {"width": 16, "train_per_class": 500, "epochs": 15, "batch_size": 128, "proj_hidden": 512,
            "lr": 2e-3, "weight_decay": 1e-6, "warmup_epochs": 1, "eval_train_per_class": 200,
            "eval_test_per_class": 50, "final_train_per_class": 1000, "log_every": 10},
    # Under a minute on 2 CPU cores: a complete run directory for tests and quick checks.
    "smoke": {"width": 8, "train_per_class": 40, "epochs": 2, "batch_size": 64, "proj_hidden": 128,
              "proj_out": 32, "lr": 2e-3, "weight_decay": 1e-6, "warmup_epochs": 0,
              "eval_train_per_class": 20, "eval_test_per_class": 10, "final_train_per_class": 50,
              "log_every": 2},
}


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _field_type(f) -> Any:
    kind = str(f.type)
    if "bool" in kind:
        return _parse_bool
    for name, cast in (("int", int), ("float", float)):
        if kind.startswith(name):
            return cast
    return str


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per TrainConfig field (except ``method``), defaulting to 'not given'."""
    group = parser.add_argument_group("hyperparameters (override preset and config file)")
    for f in fields(TrainConfig):
        if f.name != "method":
            group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=_field_type(f),
                               default=None, metavar=f.name.upper())


def build_config(method: str, preset: str, config_file: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """Preset, then the JSON config file, then command-line flags; then the method defaults."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    values: dict[str, Any] = {"method": method, **PRESETS[preset]}
    if config_file:
        loaded = json.loads(Path(config_file).read_text())
        known = {f.name for f in fields(TrainConfig)}
        if unknown := set(loaded) - known:
            raise ValueError(f"{config_file}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values).resolved()
