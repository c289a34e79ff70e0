"""The self-supervised methods, one module each, and the one table that names them.

Adding a method: write its module (a ``SSLMethod`` subclass with ``title``, ``recipe``, its
hyperparameters as keyword-only constructor arguments, ``forward(views) -> loss``) and add
one line to ``METHODS``; the CLI, the presets and the config pick it up from here.
"""

from __future__ import annotations

from .barlowtwins import BarlowTwins
from .base import VIEWS, Recipe, SSLMethod, mlp
from .byol import BYOL
from .simclr import SimCLR

METHODS: dict[str, type[SSLMethod]] = {"simclr": SimCLR, "byol": BYOL, "barlowtwins": BarlowTwins}

__all__ = ["BYOL", "METHODS", "VIEWS", "BarlowTwins", "Recipe", "SSLMethod", "SimCLR", "mlp"]
