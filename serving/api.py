"""The embedding server: ``build_server`` puts the model, routes, batching and limits together, and
``uvicorn_options`` gives the HTTP-level limits to pass to ``run``.

The model is resolved and verified once, in the parent (``zoo.fetch``: no model is built there);
each inference worker builds it from the resolved local files. The ONNX backend's file is exported
once per set of weights (cached, see ``zoo.onnx.cached_export``) or given, and refused unless
its metadata matches the model. An index for ``/search`` is opened once here too, and refused unless
the served model embedded it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from fastapi import Request
from fastapi.responses import JSONResponse

import zoo
from zoo.onnx import cached_export, check_metadata, model_metadata
from zoo.retrieval.index import NeighborIndex

from .batching import GapBatchingLoop
from .config import Limits, SearchSettings, ServedModel, model_aliases
from .http_guard import guarded_protocol
from .ipc_transport import IpcTransport
from .litserve_compat import EmbeddingLitServer
from .routes import ImageEmbeddingSpec
from .worker import HEALTH_PATH, EncoderAPI, Unauthorized

if TYPE_CHECKING:
    from zoo.hub.sources import Resolved


def served_model(model: str, resolved: Resolved, backend: str) -> ServedModel:
    """What ``model`` (as spelled on the command line) serves, read from its resolved files without building it."""
    with torch.device("meta"):  # the output size without allocating or initialising weights
        dim = zoo.Encoder(resolved.config).feature_dim
    config = resolved.config
    return ServedModel(model, model_aliases(model, resolved.provenance), dim, config.input_size,
                       None if config.mean is None else tuple(config.mean),
                       None if config.std is None else tuple(config.std), dict(resolved.provenance), backend)


def check_index(directory: str | Path, served: ServedModel) -> dict[str, Any]:
    """Open an indexed embed output once, refused unless ``served`` embedded it (same rule as
    ``NeighborIndex.encoder``, without building the model); its description for ``/info``."""
    try:
        index = NeighborIndex.load(directory)
    except RuntimeError as e:  # faiss or pyarrow not installed (their message says what to install), or unreadable
        raise ValueError(f"--index {directory}: {e}") from e
    try:
        index.check_model(served.provenance.get("sha256"), served.dim, served.name)
    except ValueError as e:
        raise ValueError(f"--index {directory}: {e}") from None
    return {"directory": str(index.directory), "rows": len(index), "type": index.info["type"],
            "labels": bool(index.manifest.get("classes"))}


def build_server(model: str, *, backend: str = "torch", max_batch_size: int = 16, batch_timeout: float = 0.05,
                 batch_gap: float = 0.008, workers: int = 1, limits: Limits = Limits(), accelerator: str = "auto",
                 api_key: str | None = None, onnx_file: str | Path | None = None, index: str | Path | None = None,
                 search_k: int = 10, max_search_k: int = 100, absolute_paths: bool = False) -> EmbeddingLitServer:
    """A LitServer for ``model`` (registry name, ``hf-hub:owner/repo[@rev]`` or a local path). A batch starts
    when it has ``max_batch_size`` requests, when no request came for ``batch_gap`` s, or ``batch_timeout`` s
    after its first request. With ``api_key`` every route but /health needs it and /docs is off. With
    ``index`` (an embed output indexed by ``ssl-zoo index``) ``POST /search`` answers ``search_k`` neighbours
    per image, or ``?k=`` up to ``max_search_k``."""
    resolved = zoo.fetch(model)
    served = served_model(model, resolved, backend)
    search, index_info = None, None
    if index is not None:
        search = SearchSettings(str(Path(index).resolve()), search_k, max_search_k, absolute_paths)
        index_info = check_index(search.directory, served) | {"k": search_k, "max_k": max_search_k}
    onnx_path = None
    if backend == "onnx":
        onnx_path = Path(onnx_file) if onnx_file else cached_export(resolved.config, resolved.provenance, served.dim,
                                                                    lambda: resolved.load("cpu"))
        check_metadata(onnx_path, model_metadata(resolved.config, resolved.provenance, served.dim))
    elif onnx_file:
        raise ValueError("--onnx-file is for --backend onnx")
    spec = ImageEmbeddingSpec(served, limits, search)
    with warnings.catch_warnings():  # at batch size 1 the loop still batches, one request at a time
        warnings.filterwarnings("ignore", message="The LitServer has both batch and unbatch")
        api = EncoderAPI(resolved, backend, onnx_path, api_key, max_batch_size=max_batch_size,
                         batch_timeout=batch_timeout, spec=spec, loop=GapBatchingLoop(batch_gap))
    metadata = {**served.info(), "onnx_file": str(onnx_path) if onnx_path else None,
                "batching": {"max_batch_size": max_batch_size, "batch_timeout": batch_timeout, "batch_gap": batch_gap},
                "limits": limits.as_dict(), "index": index_info}
    server = EmbeddingLitServer(api, accelerator=accelerator, workers_per_device=workers,
                                timeout=limits.request_timeout, healthcheck_path=HEALTH_PATH, model_metadata=metadata,
                                restart_workers=True, disable_openapi_url=api_key is not None,
                                make_transport=IpcTransport.create)
    server.app.add_exception_handler(Unauthorized, _unauthorized)
    return server


async def _unauthorized(request: Request, error: Unauthorized) -> JSONResponse:
    """401 in OpenAI's error shape, whose clients show only ``error.message``."""
    return JSONResponse({"error": {"message": str(error), "type": "invalid_request_error", "param": None,
                                   "code": "invalid_api_key"}}, status_code=401, headers={"WWW-Authenticate": "Bearer"})


def uvicorn_options(limits: Limits, access_log: bool = False) -> dict[str, Any]:
    """uvicorn settings for ``server.run``: header size and deadline, keep-alive, connection count, access log."""
    return {"http": guarded_protocol(limits.max_header_bytes, limits.header_timeout, limits.max_client_connections),
            "timeout_keep_alive": limits.keep_alive, "limit_concurrency": limits.max_connections,
            "access_log": access_log}
