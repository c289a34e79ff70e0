"""The embedding server: ``build_server`` puts the models, routes, batching and limits together, and
``uvicorn_options`` gives the HTTP-level limits to pass to ``run``.

Each model is resolved and verified once, in the parent (``zoo.fetch``: no model is built there);
each inference worker builds every model from the resolved local files. An ONNX backend's file is
exported once per set of weights (cached, see ``zoo.onnx.cached_export``; int8 through
``zoo.quantize.cached_int8``, checked for accuracy) or given, and refused unless its metadata matches the
model. An index for ``/search`` is checked here too, and refused unless a served model embedded it.
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
from .config import Limits, SearchSettings, ServedModel, ServedModels, model_aliases
from .http_guard import guarded_protocol
from .ipc_transport import IpcTransport
from .litserve_compat import EmbeddingLitServer
from .routes import ImageEmbeddingSpec
from .worker import READY_PATH, EncoderAPI, Unauthorized

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


def check_index(directory: str | Path, models: ServedModels) -> tuple[str, dict[str, Any]]:
    """Open an indexed embed output once, refused unless one of ``models`` embedded it (same rule as
    ``NeighborIndex.encoder``, without building a model); that model's name and the index's description."""
    try:
        index = NeighborIndex.load(directory)
    except RuntimeError as e:  # faiss or pyarrow not installed (their message says what to install), or unreadable
        raise ValueError(f"--index {directory}: {e}") from e
    errors = []
    for served in models:
        try:
            index.check_model(served.provenance.get("sha256"), served.dim, served.name)
        except ValueError as e:
            errors.append(str(e))
            continue
        return served.name, {"directory": str(index.directory), "rows": len(index), "type": index.info["type"],
                             "labels": bool(index.manifest.get("classes")), "model": served.name}
    raise ValueError(f"--index {directory}: no model served embedded it: {errors[0]}")


def build_server(models: str | list[str], *, backend: str = "torch", max_batch_size: int = 16,
                 batch_timeout: float = 0.05, batch_gap: float = 0.008, workers: int = 1, limits: Limits = Limits(),
                 accelerator: str = "auto", api_key: str | None = None, onnx_file: str | Path | None = None,
                 index: str | Path | None = None, search_k: int = 10, max_search_k: int = 100,
                 absolute_paths: bool = False, metrics_public: bool = False) -> EmbeddingLitServer:
    """A LitServer for ``models`` (each a registry name, ``hf-hub:owner/repo[@rev]`` or a local path; the first
    answers requests that name none). A batch starts at once when nothing else waits, else when it has
    ``max_batch_size`` requests, when no request came for ``batch_gap`` s, or ``batch_timeout`` s after its
    first request. With ``api_key`` every route but the probes (and /metrics with ``metrics_public``) needs it
    and /docs is off. With ``index`` (an embed output indexed by ``ssl-zoo index`` with one of the models)
    ``POST /search`` answers ``search_k`` neighbours per image, or ``?k=`` up to ``max_search_k``."""
    names = [models] if isinstance(models, str) else list(models)
    resolved = [zoo.fetch(name) for name in names]
    served = ServedModels(served_model(name, r, backend) for name, r in zip(names, resolved))
    for i, a in enumerate(served):
        for b in served[i + 1:]:
            if common := sorted(set(a.aliases) & set(b.aliases)):
                raise ValueError(f"{a.name} and {b.name} are the same model (both answer to {common[0]}): serve it once")
    search, index_info = None, None
    if index is not None:
        owner, index_info = check_index(Path(index).resolve(), served)
        search = SearchSettings(str(Path(index).resolve()), search_k, max_search_k, absolute_paths, owner)
        index_info |= {"k": search_k, "max_k": max_search_k}
    onnx_paths = None
    if backend != "torch":
        if onnx_file and len(names) > 1:
            raise ValueError("--onnx-file gives one model's graph: serve one model with it, or let each be exported")
        onnx_paths = [Path(onnx_file) if onnx_file else onnx_graph(r, m.dim, backend) for r, m in zip(resolved, served)]
        for r, m, path in zip(resolved, served, onnx_paths):
            check_metadata(path, model_metadata(r.config, r.provenance, m.dim))
    elif onnx_file:
        raise ValueError("--onnx-file is for an ONNX backend (--backend onnx or onnx-int8)")
    spec = ImageEmbeddingSpec(served, limits, search, resolved)
    with warnings.catch_warnings():  # at batch size 1 the loop still batches, one request at a time
        warnings.filterwarnings("ignore", message="The LitServer has both batch and unbatch")
        api = EncoderAPI(resolved, [m.name for m in served], backend, onnx_paths, api_key, metrics_public,
                         max_batch_size=max_batch_size, batch_timeout=batch_timeout, spec=spec,
                         loop=GapBatchingLoop(batch_gap))
    described = [m.info() | ({"onnx_file": str(path)} if onnx_paths else {})
                 for m, path in zip(served, onnx_paths or served)]
    metadata = {"models": described, **described[0],
                "batching": {"max_batch_size": max_batch_size, "batch_timeout": batch_timeout, "batch_gap": batch_gap},
                "limits": limits.as_dict(), "index": index_info}
    server = EmbeddingLitServer(api, accelerator=accelerator, workers_per_device=workers,
                                timeout=limits.request_timeout, healthcheck_path=READY_PATH, model_metadata=metadata,
                                restart_workers=True, disable_openapi_url=api_key is not None,
                                make_transport=IpcTransport.create)
    server.app.add_exception_handler(Unauthorized, _unauthorized)
    return server


def onnx_graph(resolved: Resolved, dim: int, backend: str) -> Path:
    """The cached ONNX file of a resolved model for ``backend`` (``onnx``: fp32; ``onnx-int8``: quantised, with
    its accuracy guardrail)."""
    build = lambda: resolved.load("cpu")
    path = cached_export(resolved.config, resolved.provenance, dim, build)
    if backend == "onnx-int8":
        from zoo.quantize import cached_int8

        path = cached_int8(path, resolved.config, resolved.provenance, dim, build)
    return path


async def _unauthorized(request: Request, error: Unauthorized) -> JSONResponse:
    """401 in OpenAI's error shape, whose clients show only ``error.message``."""
    return JSONResponse({"error": {"message": str(error), "type": "invalid_request_error", "param": None,
                                   "code": "invalid_api_key"}}, status_code=401, headers={"WWW-Authenticate": "Bearer"})


def uvicorn_options(limits: Limits, access_log: bool = False) -> dict[str, Any]:
    """uvicorn settings for ``server.run``: header size and deadline, keep-alive, connection count, access log."""
    return {"http": guarded_protocol(limits.max_header_bytes, limits.header_timeout, limits.max_client_connections),
            "timeout_keep_alive": limits.keep_alive, "limit_concurrency": limits.max_connections,
            "access_log": access_log}
