"""``ssl-zoo train``: one command per recipe."""

from __future__ import annotations

import argparse

from .config import PRESETS, add_config_arguments, build_config, overrides_from_args
from .methods import METHODS


def register(subparsers) -> None:
    """Add the ``train`` subcommand (methods and flags from ``METHODS`` and ``TrainConfig``)."""
    titles = ", ".join(m.title for m in METHODS.values())
    p = subparsers.add_parser("train", help=f"train {titles} on CIFAR-10",
                              description="Train a self-supervised ResNet-18 on CIFAR-10. Flags override the "
                              "preset and the --config file. Works under torchrun for several processes.")
    p.add_argument("method", choices=list(METHODS), help="the self-supervised method")
    p.add_argument("--preset", choices=sorted(PRESETS), default="seed",
                   help="seed (default): the notebook's recipe, full-width ResNet-18, 50 epochs on all of CIFAR-10, "
                   "for a GPU (days on a CPU: it warns); cpu: width 16, 5,000 images, 15 epochs, about 10-15 min on "
                   "2 CPU cores; smoke: a complete run directory in under a minute")
    p.add_argument("--out", required=True, help="run directory (config, metrics, curves, checkpoint, encoder); "
                   "one that already holds a run needs --resume")
    p.add_argument("--config", help="JSON file of hyperparameters (keys: TrainConfig fields, e.g. a run's "
                   "train_config.json; a \"method\" key must match the method trained)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint "
                   "(verified); a finished run is left as it is")
    p.add_argument("--re-export", action="store_true", help="evaluate and export a finished run in --out again "
                   "from its checkpoint; the previous results.json, model.safetensors and config.json move to "
                   "previous/<n>/")
    add_config_arguments(p)
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> None:
    from .loop import train

    train(build_config(args.method, args.preset, args.config, overrides_from_args(args)), args.out,
          resume=args.resume, re_export=args.re_export)
