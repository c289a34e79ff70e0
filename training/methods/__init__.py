"""The self-supervised methods, one module each, and the one table that names them.

Adding a method: write its module (a ``SSLMethod`` subclass with ``title``, ``recipe``, its
hyperparameters as keyword-only constructor arguments, and ``project`` + ``pair_loss`` or its own
``forward(views, local_views=None) -> loss``) and add one line to ``METHODS``; the CLI, the
presets and the config pick it up from here.
"""

from __future__ import annotations

from .barlowtwins import BarlowTwins
from .base import VIEWS, Recipe, SSLMethod, mlp
from .byol import BYOL
from .simclr import SimCLR
from .vicreg import VICReg

METHODS: dict[str, type[SSLMethod]] = {"simclr": SimCLR, "byol": BYOL, "barlowtwins": BarlowTwins, "vicreg": VICReg}

__all__ = ["BYOL", "METHODS", "VIEWS", "BarlowTwins", "Recipe", "SSLMethod", "SimCLR", "VICReg", "mlp"]
