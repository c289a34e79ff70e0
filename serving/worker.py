"""The LitAPI: what each inference worker does with requests (images already decoded in the HTTP
process), and the auth hook LitServe puts in front of every route."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from fastapi import Request

from zoo.onnx import check_metadata, model_metadata, onnx_session

from .auth import key_matches, request_key
from .errors import HTTPError
from .litserve_compat import LitAPI

HEALTH_PATH = "/health"


class Unauthorized(HTTPError):
    """A request without the right API key: 401, answered in OpenAI's error shape by ``api.build_server``."""

    def __init__(self, message: str) -> None:
        super().__init__(401, message)


@dataclass(frozen=True)
class Rows:
    """Rows (images or features) of one or more requests, in order: the first ``sizes[0]`` rows are the
    first request's, which asked for L2-normalised vectors if ``normalize[0]``."""

    data: np.ndarray | torch.Tensor
    sizes: tuple[int, ...]
    normalize: tuple[bool, ...]


class EncoderAPI(LitAPI):
    """Loads the resolved model once per worker and turns batches of uint8 images into feature rows."""

    def __init__(self, resolved, backend: str = "torch", onnx_path: Path | None = None, api_key: str | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
        if backend == "onnx" and onnx_path is None:
            raise ValueError("the onnx backend needs the exported file (onnx_path)")
        self.resolved, self.backend, self.onnx_path, self.api_key = resolved, backend, onnx_path, api_key

    def setup(self, device: str) -> None:
        """Build the model from the files the parent resolved (no download, no second export)."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a restarted worker too: the main process stops workers
        self.device = "cpu" if self.backend == "onnx" else device
        self.encoder = self.resolved.load(self.device, verify=True)  # exactly the bytes the server verified
        self.preprocess = self.encoder.preprocess
        if self.backend == "onnx":
            check_metadata(self.onnx_path, model_metadata(self.resolved.config, self.resolved.provenance,
                                                          self.encoder.feature_dim))
            self.session = onnx_session(self.onnx_path)

    def authorize(self, request: Request) -> None:
        """LitServe's auth hook, a dependency of every route: the API key (X-API-Key or Bearer), except on /health."""
        if self.api_key is None or request.scope["path"] == HEALTH_PATH:
            return
        if not key_matches(request_key(request.headers), self.api_key):
            raise Unauthorized("missing or wrong API key: send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")

    def decode_request(self, request: dict) -> Rows:
        """One queued request (decoded images and its normalize flag) as rows."""
        images = request["images"]
        return Rows(images, (len(images),), (bool(request["normalize"]),))

    def batch(self, inputs: list[Rows]) -> Rows:
        """Several requests' images as one batch."""
        return Rows(np.concatenate([r.data for r in inputs]), sum((r.sizes for r in inputs), ()),
                    sum((r.normalize for r in inputs), ()))

    def predict(self, x: Rows) -> Rows:
        """The model's features of every image in the batch: preprocessing, then torch or onnxruntime."""
        images = self.preprocess(x.data)
        if self.backend == "onnx":
            feats = torch.from_numpy(self.session.run(None, {"images": images.numpy()})[0])
        else:
            with torch.inference_mode():
                feats = self.encoder(images.to(self.device)).float().cpu()
        return Rows(feats, x.sizes, x.normalize)

    def unbatch(self, output: Rows) -> list[Rows]:
        """The batch's features split back into each request's rows, in order."""
        parts = torch.split(output.data, list(output.sizes))
        return [Rows(part, (n,), (norm,)) for part, n, norm in zip(parts, output.sizes, output.normalize)]

    def encode_response(self, output: Rows) -> np.ndarray:
        """One request's features as float32 ``(n, dim)``, L2-normalised if it asked."""
        feats = torch.nn.functional.normalize(output.data, dim=1) if output.normalize[0] else output.data
        return np.ascontiguousarray(feats.numpy(), dtype=np.float32)
