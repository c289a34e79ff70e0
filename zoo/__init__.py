"""ssl-zoo: self-supervised vision encoders and the tools to probe them.

Names are imported on first use (PEP 562), so ``import zoo`` and ``ssl-zoo --help`` do not pay
for torch until something needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "DatasetError": "data", "ImageArrays": "data", "load_cifar10": "data", "load_image_folder": "data",
    "ARCHITECTURES": "encoders", "EncoderConfig": "encoders", "build_encoder": "encoders",
    "HashMismatchError": "hub",
    "Encoder": "model", "embed": "model",
    "ProbeResult": "probes", "evaluate": "probes", "extract_features": "probes", "knn_probe": "probes",
    "linear_probe": "probes", "probe": "probes",
    "PendingModelError": "registry", "UnknownModelError": "registry", "list_models": "registry",
    "fetch": "sources", "load": "sources", "parse_source": "sources",
    "Preprocess": "transforms",
    "embed_collection": "collection", "load_collection": "collection",
    "NeighborIndex": "neighbors", "build_index": "neighbors",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .data import DatasetError, ImageArrays, load_cifar10, load_image_folder
    from .encoders import ARCHITECTURES, EncoderConfig, build_encoder
    from .hub import HashMismatchError
    from .model import Encoder, embed
    from .probes import ProbeResult, evaluate, extract_features, knn_probe, linear_probe, probe
    from .registry import PendingModelError, UnknownModelError, list_models
    from .sources import fetch, load, parse_source
    from .transforms import Preprocess
    from .collection import embed_collection, load_collection
    from .neighbors import NeighborIndex, build_index


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first access."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'zoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
