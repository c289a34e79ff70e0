"""The LitAPI: what each inference worker does with requests (images already decoded in the HTTP
process), the auth hook LitServe puts in front of every route, and the readiness ``GET /ready`` answers."""

from __future__ import annotations

import multiprocessing
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import Request

from zoo.onnx import check_metadata, model_metadata, onnx_session

from .auth import key_matches, request_key
from .errors import HTTPError
from .litserve_compat import LitAPI
from .metrics import metrics
from .page import PAGE_FILES

READY_PATH = "/ready"
# Probes (load balancers ask without a key) and the page's own files (the page then asks for the key).
OPEN_PATHS = ("/health", READY_PATH, *PAGE_FILES)
BACKENDS = ("torch", "onnx", "onnx-int8")
# Set by the main process when it starts to shut down (SIGTERM): the forked HTTP processes answer /ready 503
# from then on, while they still serve what is in flight.
STOPPING = multiprocessing.get_context("fork").Event()


class Unauthorized(HTTPError):
    """A request without the right API key: 401, answered in OpenAI's error shape by ``api.build_server``."""

    def __init__(self, message: str) -> None:
        super().__init__(401, message)


@dataclass(frozen=True)
class Rows:
    """Rows (images or features) of one or more requests, in order: the first ``sizes[0]`` rows are the
    first request's, for model ``models[0]``, which asked for L2-normalised vectors if ``normalize[0]``."""

    data: np.ndarray | torch.Tensor | list[torch.Tensor]
    sizes: tuple[int, ...]
    normalize: tuple[bool, ...]
    models: tuple[int, ...]


class EncoderAPI(LitAPI):
    """Loads the resolved models once per worker and turns batches of uint8 images into feature rows."""

    def __init__(self, resolved: list, names: list[str], backend: str = "torch", onnx_paths: list[Path] | None = None,
                 api_key: str | None = None, metrics_public: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend != "torch" and (onnx_paths is None or len(onnx_paths) != len(resolved)):
            raise ValueError("an ONNX backend needs each model's exported file (onnx_paths)")
        self.resolved, self.names, self.backend, self.onnx_paths = resolved, names, backend, onnx_paths
        self.api_key = api_key
        self.open_paths = OPEN_PATHS + (("/metrics",) if metrics_public else ())

    def setup(self, device: str) -> None:
        """Build every model from the files the parent verified (no download, no second export), run one batch
        through each (so the first request does not pay for it), then report it to /metrics."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a restarted worker too: the main process stops workers
        self.device = "cpu" if self.backend != "torch" else device
        self.encoders = [r.load(self.device, verify=True) for r in self.resolved]  # exactly the verified bytes
        if self.backend != "torch":
            for r, encoder, path in zip(self.resolved, self.encoders, self.onnx_paths):
                check_metadata(path, model_metadata(r.config, r.provenance, encoder.feature_dim))
            self.sessions = [onnx_session(path) for path in self.onnx_paths]
        for i, encoder in enumerate(self.encoders):
            size = encoder.config.input_size
            self._features(i, np.zeros((2, size, size, 3), np.uint8), record=False)
            provenance = self.resolved[i].provenance
            metrics().info.labels(self.names[i], (provenance.get("name") or "").rpartition(".")[2],
                                  provenance.get("revision") or "", provenance.get("sha256") or "",
                                  self.backend).set(1)

    def health(self) -> bool:
        """``GET /ready`` (LitServe asks once its workers are set up, i.e. loaded and warmed): not while the
        server shuts down, nor before this HTTP process has opened the index, if it serves one."""
        return not STOPPING.is_set() and (self.spec is None or self.spec.index_ready())

    def authorize(self, request: Request) -> None:
        """LitServe's auth hook, a dependency of every route: the API key (X-API-Key or Bearer), except on the
        probes (and /metrics with --metrics-public)."""
        if self.api_key is None or request.scope["path"] in self.open_paths:
            return
        if not key_matches(request_key(request.headers), self.api_key):
            raise Unauthorized("missing or wrong API key: send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")

    def decode_request(self, request: dict) -> Rows:
        """One queued request (decoded images, its model and its normalize flag) as rows."""
        images = request["images"]
        return Rows(images, (len(images),), (bool(request["normalize"]),), (int(request["model"]),))

    def batch(self, inputs: list[Rows]) -> Rows:
        """Several requests' images as one batch (each model's rows are run through it in ``predict``)."""
        metrics().batch.observe(len(inputs))
        return Rows(np.concatenate([r.data for r in inputs]), sum((r.sizes for r in inputs), ()),
                    sum((r.normalize for r in inputs), ()), sum((r.models for r in inputs), ()))

    def predict(self, x: Rows) -> Rows:
        """The features of every image in the batch, each request's with its model (rows as a list: models may
        differ in width)."""
        owner = np.repeat(np.array(x.models), x.sizes)  # the model of each row
        feats: list[torch.Tensor] = [torch.empty(0)] * len(owner)
        for model in sorted(set(x.models)):
            rows = np.flatnonzero(owner == model)
            for row, feat in zip(rows, self._features(model, x.data[rows])):
                feats[row] = feat
        return Rows(feats, x.sizes, x.normalize, x.models)

    def _features(self, model: int, images: np.ndarray, record: bool = True) -> torch.Tensor:
        """One model's features of uint8 images: preprocessing, then torch or onnxruntime; with ``record``, timed
        and their norms observed (for /metrics)."""
        encoder, start = self.encoders[model], time.perf_counter()
        batch = encoder.preprocess(images)
        if self.backend != "torch":
            feats = torch.from_numpy(self.sessions[model].run(None, {"images": batch.numpy()})[0])
        else:
            with torch.inference_mode():
                feats = encoder(batch.to(self.device)).float().cpu()
        if record:
            metrics().model.labels(self.names[model]).observe(time.perf_counter() - start)
            norms = metrics().norm.labels(self.names[model])
            for value in torch.linalg.vector_norm(feats, dim=1).tolist():
                norms.observe(value)
        return feats

    def unbatch(self, output: Rows) -> list[Rows]:
        """The batch's features split back into each request's rows, in order."""
        starts = np.cumsum((0, *output.sizes))
        return [Rows(torch.stack(output.data[a:b]), (n,), (norm,), (model,))
                for a, b, n, norm, model in zip(starts, starts[1:], output.sizes, output.normalize, output.models)]

    def encode_response(self, output: Rows) -> np.ndarray:
        """One request's features as float32 ``(n, dim)``, L2-normalised if it asked."""
        feats = torch.nn.functional.normalize(output.data, dim=1) if output.normalize[0] else output.data
        return np.ascontiguousarray(feats.numpy(), dtype=np.float32)
