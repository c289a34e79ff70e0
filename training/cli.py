"""``ssl-zoo train``: one command per recipe."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoo.cli import Command


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``ssl-zoo train``'s arguments: methods and flags from ``METHODS`` and ``TrainConfig``."""
    from .config import PRESETS, add_config_arguments
    from .methods import METHODS

    p.add_argument("method", choices=list(METHODS), help="the self-supervised method: " +
                   ", ".join(f"{name} ({m.title})" for name, m in METHODS.items()))
    p.add_argument("--preset", choices=sorted(PRESETS), default="seed",
                   help="seed (default): the notebook's recipe, full-width ResNet-18, 50 epochs on all of CIFAR-10, "
                   "for a GPU (days on a CPU: it warns); cpu: the zoo's CPU recipe (width 16, all of CIFAR-10, at "
                   "most 100 minutes per method on 2 CPU cores); quick: width 16, 5,000 images, 15 epochs, about "
                   "10-15 min on 2 CPU cores; smoke: a complete run directory in under a minute")
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
    from .config import build_config, overrides_from_args
    from .loop import train

    cfg = build_config(args.method, args.preset, args.config, overrides_from_args(args))
    try:
        train(cfg, args.out, resume=args.resume, re_export=args.re_export)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(_interrupted(args.out, cfg.epochs)) from None


def _interrupted(out: str, epochs: int) -> str:
    """What Ctrl-C kept of the run in ``out``, and the command that continues it."""
    from .provenance import command_line
    from .resume import read_history

    done = len(read_history(Path(out)))
    kept = (f"the checkpoint in {out} keeps epoch {done} of {epochs}" if done else
            f"no epoch of {epochs} had finished; {out} holds the run's settings")
    command = command_line()
    return f"{kept}; continue with: {command}{'' if ' --resume' in command else ' --resume'}"


COMMANDS = {
    "train": Command("train a self-supervised encoder (SimCLR, BYOL, Barlow Twins or VICReg) on CIFAR-10 or your own "
                     "images",
                     "training.cli:add_arguments",
                     description="Train a self-supervised ResNet-18 on CIFAR-10, or on your own images with --data "
                     "(a folder, a text file of paths or webdataset shards) and --image-size. Flags override the preset "
                     "and the --config file. Works under torchrun for several processes."),
}
