"""The HTTP routes, as a LitServe spec: ``POST /embed``, ``POST /v1/embeddings``, ``GET /v1/models`` and,
with an index, ``POST /search``.

Requests are read, limited and decoded in the HTTP process (decoding in a thread), so an inference
worker only batches, preprocesses and runs the model. Each request is one queue item holding all
its images, answered within the request deadline (504 after it). ``/search`` embeds its images the
same way, then searches the faiss index, which each HTTP process opens on first use (in a thread).
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson
from fastapi import Request
from fastapi.responses import Response
from zoo.retrieval.index import NeighborIndex, vote

from .bodies import (BodyBudget, base64_images, check_keys, content_kind, embed_inputs, parse_bool,
                     parse_json_object, request_body)
from .config import Limits, SearchSettings, ServedModel
from .decode import decode_image
from .errors import HTTPError
from .litserve_compat import LitAPIStatus, LitSpec, ResponseBufferItem

DECODE_THREADS = 2  # per HTTP process: Pillow releases the GIL, so two decodes run at once on 2 cores
OPENAI_FIELDS = ("input", "model", "encoding_format", "dimensions", "user", "normalize")
# A stalled body: end the connection. (After a 413 or 429 the rest of the body is read and dropped, so the client
# can read the answer; closing with unread data would reset the connection and lose it.)
_CLOSE_AFTER = (408,)
NO_INDEX = ("this server has no index to search: start it with `ssl-zoo serve MODEL --index DIR` (DIR: an "
            "`ssl-zoo embed` output indexed by `ssl-zoo index`)")


class ImageEmbeddingSpec(LitSpec):
    """Image-embedding routes. LitServe's OpenAIEmbeddingSpec is text-shaped and refuses several inputs
    per request when batching is on, so this spec takes images and batches any number per request."""

    def __init__(self, model: ServedModel, limits: Limits, search: SearchSettings | None = None) -> None:
        super().__init__()
        self.api_path = "/embed"
        self.model, self.limits, self.search_settings, self.created = model, limits, search, int(time.time())
        self.budget = BodyBudget(limits.max_inflight_bytes)  # each forked HTTP process has its own
        self._index_load: asyncio.Task | None = None  # each HTTP process opens the index on first use
        self._decoders: ThreadPoolExecutor | None = None  # made in each HTTP process, on its first image
        self.add_endpoint("/embed", self.embed, ["POST"])
        self.add_endpoint("/v1/embeddings", self.openai_embeddings, ["POST"])
        self.add_endpoint("/v1/models", self.openai_models, ["GET"])
        self.add_endpoint("/search", self.search if search else self.no_search, ["POST"])

    async def embed(self, request: Request) -> Response:
        """``POST /embed``: multipart files, a JSON list of base64 images, or one raw image body."""
        deadline = time.monotonic() + self.limits.request_timeout
        try:
            async with self._body(request) as body:
                blobs, normalize = await embed_inputs(request, body, self.limits.max_images)
                normalize = _one_normalize(normalize, request.query_params.get("normalize"))
                vectors = await self._embed(blobs, normalize, deadline)
        except HTTPError as e:
            return _error(e.status, {"error": str(e)})
        return _json({"model": self.model.name, "dim": self.model.dim, "embeddings": vectors})

    async def search(self, request: Request) -> Response:
        """``POST /search``: images as for ``/embed``, ``?k=``; per image its k most similar rows (and k-NN label)."""
        deadline = time.monotonic() + self.limits.request_timeout
        try:
            k = self._search_k(request.query_params.get("k"))
            async with self._body(request) as body:
                blobs, normalize = await embed_inputs(request, body, self.limits.max_images)
                if normalize is not None or "normalize" in request.query_params:
                    raise HTTPError(400, "normalize does not apply to /search: queries and rows are always "
                                     "L2-normalised (cosine similarity); remove it")
                vectors = await self._embed(blobs, True, deadline)
            index, hits = await self._search(vectors, k, deadline)
        except HTTPError as e:
            return _error(e.status, {"error": str(e)})
        labelled = bool(index.manifest.get("classes"))
        if not self.search_settings.absolute_paths:  # the server's file system is not the client's business
            hits = [[{**hit, "path": index.relative(hit["path"])} for hit in image_hits] for image_hits in hits]
        results = [{"neighbors": h, **({"label": vote(h)} if labelled else {})} for h in hits]
        return _json({"model": self.model.name, "k": k, "index": {"rows": len(index), "type": index.info["type"]},
                      "results": results})

    async def no_search(self, request: Request) -> Response:
        """``POST /search`` on a server started without ``--index``: 404 saying how to start one with it."""
        return _error(404, {"error": NO_INDEX})

    async def openai_embeddings(self, request: Request) -> Response:
        """``POST /v1/embeddings``, as OpenAI's: ``input`` is base64 images or data URLs; unit-length vectors
        unless ``"normalize": false``."""
        deadline = time.monotonic() + self.limits.request_timeout
        try:
            if content_kind(request) != "json":
                raise HTTPError(415, "this route takes a JSON body (content-type: application/json)")
            async with self._body(request) as body:
                payload = parse_json_object(body, self.limits.max_images)
                check_keys(payload, OPENAI_FIELDS, "the request")
                encoding = self._check_openai_fields(payload)
                if "input" not in payload:
                    raise HTTPError(400, "the request needs \"input\": a base64 image or data URL, or a list of "
                                     "them")
                blobs = base64_images(payload["input"], "input", self.limits.max_images)
                # Unit vectors by default, as OpenAI's (its clients take cosine as a dot product); "normalize": false
                # gives the raw features.
                normalize = parse_bool(payload["normalize"], "normalize") if "normalize" in payload else True
                vectors = await self._embed(blobs, normalize, deadline)
        except HTTPError as e:
            kind = "invalid_request_error" if e.status < 500 else "server_error"
            return _error(e.status, {"error": {"message": str(e), "type": kind, "param": None, "code": None}})
        if encoding == "base64":  # little-endian float32 bytes, as OpenAI sends them
            data = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
        else:
            data = list(vectors)
        return _json({"object": "list", "model": self.model.name, "usage": {"prompt_tokens": 0, "total_tokens": 0},
                      "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(data)]})

    async def openai_models(self, request: Request) -> Response:
        """``GET /v1/models``: the one model served, as OpenAI lists models."""
        return _json({"object": "list", "data": [{"id": self.model.name, "object": "model", "created": self.created,
                                                  "owned_by": "ssl-zoo"}]})

    def _body(self, request: Request):
        """The request body, held against this process's body budget while the request is answered."""
        return request_body(request, self.limits.max_body_bytes, self.limits.body_timeout, self.budget)

    def _search_k(self, raw: str | None) -> int:
        """The request's ``k``: the server's default when absent, else an integer from 1 to the largest allowed."""
        settings = self.search_settings
        if raw is None:
            return settings.default_k
        k = int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 10 else 0
        if not 1 <= k <= settings.max_k:
            raise HTTPError(400, f"k must be an integer from 1 to {settings.max_k} (the server's --max-search-k), "
                             f"got {raw!r}: e.g. /search?k={settings.default_k}")
        return k

    async def _search(self, vectors: np.ndarray, k: int, deadline: float) -> tuple[NeighborIndex, list[list[dict]]]:
        """The index and the k most similar rows of each vector (in a thread), within the request deadline."""
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                index = await self._index()
                return index, await asyncio.to_thread(index.search, vectors, k)
        except TimeoutError:
            raise HTTPError(504, f"the index search did not finish within the request deadline of "
                               f"{self.limits.request_timeout:g} s; retry later") from None

    async def _index(self) -> NeighborIndex:
        """The index, opened by this HTTP process's first search (in a thread); concurrent ones wait for that load."""
        if self._index_load is None:
            self._index_load = asyncio.ensure_future(asyncio.to_thread(NeighborIndex.load,
                                                                       self.search_settings.directory))
        try:
            return await asyncio.shield(self._index_load)  # the load outlives a request that times out
        except (OSError, ValueError, RuntimeError) as e:  # the files changed since the server checked them
            self._index_load = None  # the next search tries again: the files may be restored by then
            raise HTTPError(500, f"internal error: the index in {self.search_settings.directory} could not be "
                               f"opened ({e}); restore its files or restart the server with a valid --index") from e

    def _check_openai_fields(self, payload: dict) -> str:
        """Refuse a ``model`` other than the one served and a ``dimensions`` other than its own; the encoding."""
        model = payload.get("model")
        if model is not None and not (isinstance(model, str) and self.model.accepts(model)):
            raise HTTPError(404, f"model {model!r} is not served here; this server serves "
                             f"{' = '.join(self.model.aliases)} (any of these names)")
        dimensions = payload.get("dimensions")
        if dimensions is not None and dimensions != self.model.dim:
            raise HTTPError(400, f"dimensions={dimensions!r} is not supported: this model's embeddings have "
                             f"{self.model.dim} dimensions and are not truncated; omit \"dimensions\"")
        encoding = payload.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise HTTPError(400, f"encoding_format must be \"float\" or \"base64\", got {encoding!r}")
        return encoding

    @property
    def decoders(self) -> ThreadPoolExecutor:
        """Decoding's own threads (in this HTTP process): images cannot starve other work of the loop's pool."""
        if self._decoders is None:
            self._decoders = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode")
        return self._decoders

    async def _embed(self, blobs: list[tuple[str, bytes]], normalize: bool, deadline: float) -> np.ndarray:
        """Decode the images (in this process's decoding threads) and have a worker embed them, all within the
        request deadline."""
        loop, size = asyncio.get_running_loop(), self.model.input_size
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                images = await asyncio.gather(*(loop.run_in_executor(self.decoders, decode_image, data, size,
                                                                     self.limits.image, name) for name, data in blobs))
        except TimeoutError:
            raise HTTPError(504, f"the images were not decoded within the request deadline of "
                                 f"{self.limits.request_timeout:g} s; retry later") from None
        return await self._infer(np.stack(images), normalize, deadline)

    async def _infer(self, images: np.ndarray, normalize: bool, deadline: float) -> np.ndarray:
        uid = uuid.uuid4().hex
        event = asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(event=event)
        try:
            self.request_queue.put((self.response_queue_id, uid, time.monotonic(),
                                    {"images": images, "normalize": normalize}))
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await event.wait()
            response, status = self.response_buffer[uid].response
        except TimeoutError:
            raise HTTPError(504, f"no answer from the inference worker within the request deadline of "
                               f"{self.limits.request_timeout:g} s (overloaded, or restarting after a crash: see "
                               "/health); retry later") from None
        finally:
            self.response_buffer.pop(uid, None)
        if status == LitAPIStatus.ERROR:
            error = response if isinstance(response, HTTPError) else HTTPError(500, str(response))
            if error.status == 504:
                raise HTTPError(504, f"the request waited in the queue past the deadline of "
                                   f"{self.limits.request_timeout:g} s; retry later")
            raise HTTPError(500, f"internal error: inference failed ({error}); the server logged the details")
        return response


def _one_normalize(body_value: object, query_value: str | None) -> bool:
    """The request's normalize flag, from its body or query string (both: they must agree); default false."""
    values = {parse_bool(v, "normalize") for v in (body_value, query_value) if v is not None}
    if len(values) > 1:
        raise HTTPError(400, "normalize is given twice with different values (body and query string)")
    return values.pop() if values else False


def _json(payload: dict) -> Response:
    """orjson writes float32 arrays directly (shortest round-trip digits): measured 4.0 -> 2.6 ms of
    server CPU per one-image request against ``JSONResponse`` over ``tolist()``."""
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def _error(status: int, payload: dict) -> Response:
    response = _json(payload)
    response.status_code = status
    if status in _CLOSE_AFTER:
        response.headers["connection"] = "close"
    if status == 429:
        response.headers["retry-after"] = "1"
    return response
