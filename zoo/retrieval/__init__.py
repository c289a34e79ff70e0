"""Collections of images as embeddings, clip-retrieval style, one module per stage: ``images`` (list and
decode), ``embed`` (the pipeline, resumable, torchrun), ``shards`` (.npy + parquet on disk, the manifest),
``index`` (faiss nearest neighbours) and ``grid`` (the picture of a search).

``pyarrow`` and ``faiss`` (the ``index`` extra) are imported on first use through ``require``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# The commands' defaults, here without torch or pyarrow so that `ssl-zoo embed --help` imports neither.
DEFAULT_SHARD_SIZE = 10_000
DTYPES = ("float32", "float16")
BACKENDS = ("torch", "onnx", "onnx-int8")
SPLIT_PREFIX = "cifar10:"  # cifar10:train, cifar10:test
# Measured in benchmarks/results/index.md on 2 CPU cores, 512-d: one exact query takes 24 ms at 50,000 rows
# and grows linearly (72 ms at 200,000, 160 ms at 500,000); IVF-Flat (nlist 894, nprobe 32) answers in
# 0.35 ms with recall@10 0.96 against exact.
FLAT_MAX_ROWS = 50_000  # exact search up to here, IVF above
DEFAULT_NPROBE = 32  # IVF lists probed per query


def require(module: str) -> ModuleType:
    """Import a module of the ``index`` extra (pyarrow, faiss) on first use, so that ``ssl-zoo`` starts without it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise RuntimeError(f"this needs {module.split('.')[0]}, which is not installed: pip install "
                           "'ssl-zoo[index]'") from e
