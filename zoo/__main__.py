"""``python -m zoo COMMAND ...`` (also ``torchrun -m zoo embed ...``): zoo's own commands (list, probe,
baseline, publish, card, compare, embed, index, neighbors), from a checkout on ``PYTHONPATH`` alone, without the
installed ``ssl-zoo`` console script and its entry points."""

import argparse

from .cli import COMMANDS, main


def build_parser() -> argparse.ArgumentParser:
    """A parser with zoo's own subcommands."""
    parser = argparse.ArgumentParser(prog="python -m zoo", description="ssl-zoo's model and collection commands.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.add_to(subparsers, name)
    return parser


raise SystemExit(main(parser=build_parser()))
