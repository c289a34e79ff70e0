"""``ssl-zoo train``: one command per recipe."""

from __future__ import annotations

import argparse
from dataclasses import fields

from .config import PRESETS, TrainConfig, add_config_arguments, build_config


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train SimCLR, BYOL or Barlow Twins on CIFAR-10",
                              description="Train a self-supervised ResNet-18 on CIFAR-10. Presets: seed (the "
                              "notebook; GPU), cpu (~10 min on 2 cores), smoke (< 1 min). Flags override the "
                              "preset and the --config file. Works under torchrun for several processes.")
    p.add_argument("method", choices=["simclr", "byol", "barlowtwins"])
    p.add_argument("--preset", choices=sorted(PRESETS), default="seed")
    p.add_argument("--out", required=True, help="run directory (config, metrics, curves, checkpoint, encoder)")
    p.add_argument("--config", help="JSON file of hyperparameters (keys: TrainConfig fields)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_config_arguments(p)
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> None:
    from .loop import train

    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name != "method"}
    train(build_config(args.method, args.preset, args.config, overrides), args.out, resume=args.resume)
