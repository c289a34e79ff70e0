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
    "Encoder": "model", "embed": "model",
    "Preprocess": "transforms", "create_transform": "transforms", "resolve_data_config": "transforms",
    "ProbeResult": "eval.probes", "evaluate": "eval.probes", "extract_features": "eval.probes",
    "knn_probe": "eval.probes", "linear_probe": "eval.probes", "probe": "eval.probes",
    "HashMismatchError": "hub.download",
    "PendingModelError": "hub.registry", "UnknownModelError": "hub.registry", "list_models": "hub.registry",
    "fetch": "hub.sources", "load": "hub.sources", "parse_source": "hub.sources",
    "embed_collection": "retrieval.embed", "load_collection": "retrieval.shards",
    "NeighborIndex": "retrieval.index", "build_index": "retrieval.index",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .data import DatasetError, ImageArrays, load_cifar10, load_image_folder
    from .encoders import ARCHITECTURES, EncoderConfig, build_encoder
    from .eval.probes import ProbeResult, evaluate, extract_features, knn_probe, linear_probe, probe
    from .hub.download import HashMismatchError
    from .hub.registry import PendingModelError, UnknownModelError, list_models
    from .hub.sources import fetch, load, parse_source
    from .model import Encoder, embed
    from .retrieval.embed import embed_collection
    from .retrieval.index import NeighborIndex, build_index
    from .retrieval.shards import load_collection
    from .transforms import Preprocess, create_transform, resolve_data_config


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first access."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'zoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
