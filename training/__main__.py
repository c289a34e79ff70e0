"""``python -m training train ...`` (also ``torchrun -m training train ...``): works from a checkout on
``PYTHONPATH`` alone, without the installed ``ssl-zoo`` console script and its entry points."""

import argparse

from zoo import cli

from .cli import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    """A parser with training's own ``train`` subcommand."""
    parser = argparse.ArgumentParser(prog="python -m training", description="Train self-supervised encoders.")
    COMMANDS["train"].add_to(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"), "train")
    return parser


raise SystemExit(cli.main(parser=build_parser()))
