"""The HTTP routes, as a LitServe spec: ``POST /embed``, ``POST /v1/embeddings``, ``GET /v1/models``, with an
index ``POST /search``, and for operators ``GET /health`` (liveness) and ``GET /metrics`` (Prometheus);
``GET /ready`` is LitServe's own route, answered by ``worker.EncoderAPI.health``.

Requests are read, limited and decoded in the HTTP process (decoding in a thread pool of its own), so an
inference worker only batches, preprocesses and runs the model. Each request is one queue item holding all
its images and the model it asked for (``?model=``, the OpenAI ``model`` field; the first one served by
default), answered within the request deadline (504 after it). ``/search`` embeds its images the same way,
with the model that embedded the collection, then searches the faiss index, which each HTTP process opens
as it starts (in a thread): the server is not ready before.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import orjson
from fastapi import Request
from fastapi.responses import Response

from zoo.retrieval.index import NeighborIndex, vote

from .bodies import (
    BodyBudget,
    base64_images,
    check_keys,
    content_kind,
    embed_inputs,
    parse_bool,
    parse_json_object,
    request_body,
)
from .config import Limits, SearchSettings, ServedModel, ServedModels
from .decode import decode_image
from .errors import HTTPError
from .litserve_compat import LitAPIStatus, LitSpec, ResponseBufferItem, any_worker_ready
from .metrics import exposition, metrics
from .page import PAGE_FILES, collection_image, collection_map, match_grids, page_file

if TYPE_CHECKING:
    from zoo.hub.sources import Resolved

DECODE_THREADS = 2  # per HTTP process: Pillow releases the GIL, so two decodes run at once on 2 cores
OPENAI_FIELDS = ("input", "model", "encoding_format", "dimensions", "user", "normalize")
# A stalled body: end the connection. (After a 413 or 429 the rest of the body is read and dropped, so the client
# can read the answer; closing with unread data would reset the connection and lose it.)
_CLOSE_AFTER = (408,)
HEALTH, METRICS = "/health", "/metrics"
WORKER_CHECK_SECONDS = 0.5
NO_INDEX = ("this server has no index to search: start it with `ssl-zoo serve MODEL --index DIR` (DIR: an "
            "`ssl-zoo embed` output indexed by `ssl-zoo index`)")


class ImageEmbeddingSpec(LitSpec):
    """Image-embedding routes. LitServe's OpenAIEmbeddingSpec is text-shaped and refuses several inputs
    per request when batching is on, so this spec takes images and batches any number per request."""

    def __init__(self, models: ServedModels, limits: Limits, search: SearchSettings | None = None,
                 resolved: list[Resolved] | None = None) -> None:
        super().__init__()
        self.api_path = "/embed"
        self.models, self.limits, self.search_settings, self.created = models, limits, search, int(time.time())
        self.budget = BodyBudget(limits.max_inflight_bytes)  # each forked HTTP process has its own
        self._index_load: asyncio.Task | None = None  # each HTTP process opens the index as it starts
        self._decoders: ThreadPoolExecutor | None = None  # made in each HTTP process, on its first image
        self._workers_seen = (-WORKER_CHECK_SECONDS, False)  # (when, whether a worker was ready)
        # The page's match heatmaps need a model's feature map, which the workers do not return: each HTTP process
        # builds a model from the verified files for them on its first /match (a CIFAR ResNet-18: tens of MB at most).
        self.resolved, self._match_models = resolved, {}
        self._map: asyncio.Task | None = None
        self.add_endpoint("/embed", self.embed, ["POST"])
        self.add_endpoint("/v1/embeddings", self.openai_embeddings, ["POST"])
        self.add_endpoint("/v1/models", self.openai_models, ["GET"])
        self.add_endpoint("/search", self.search if search else self.no_search, ["POST"])
        self.add_endpoint(HEALTH, self.health, ["GET"])
        self.add_endpoint(METRICS, self.prometheus, ["GET"])
        for path in PAGE_FILES:
            self.add_endpoint(path, self.page, ["GET"])
        self.add_endpoint("/collection", self.collection_image, ["GET"])
        self.add_endpoint("/map", self.collection_map, ["GET"])
        self.add_endpoint("/match", self.match, ["POST"])

    def setup(self, server) -> None:
        """LitServe's wiring of this spec to the server (queues, response buffer), keeping the server to ask
        whether a worker is ready."""
        super().setup(server)
        self._server = server

    async def embed(self, request: Request) -> Response:
        """``POST /embed``: multipart files, a JSON list of base64 images, or one raw image body; ``?model=``."""
        return await self._answer("/embed", self._embed_route(request))

    async def _embed_route(self, request: Request) -> Response:
        deadline = time.monotonic() + self.limits.request_timeout
        try:
            model = self.models.select(request.query_params.get("model"))
            async with self._body(request) as body:
                blobs, normalize = await embed_inputs(request, body, self.limits.max_images)
                normalize = _one_normalize(normalize, request.query_params.get("normalize"))
                vectors = await self._embed(model, blobs, normalize, deadline)
        except HTTPError as e:
            return _error(e.status, {"error": str(e)})
        return _json({"model": model.name, "dim": model.dim, "embeddings": vectors})

    async def health(self, request: Request) -> Response:
        """``GET /health``: liveness, 200 while this process answers at all (readiness: ``GET /ready``)."""
        return Response("ok", media_type="text/plain")

    async def prometheus(self, request: Request) -> Response:
        """``GET /metrics``: every process's samples in Prometheus's text format, with the queue's depth now."""
        metrics().queue_depth.set(self.request_queue.qsize())
        body, content_type = await asyncio.to_thread(exposition)
        return Response(body, media_type=content_type)

    async def page(self, request: Request) -> Response:
        """``GET /``: the search page (with an index) or the compare page, and its script and style."""
        body, media_type = page_file(request.url.path)
        return Response(body, media_type=media_type, headers={"cache-control": "no-cache"})

    async def collection_image(self, request: Request) -> Response:
        """``GET /collection?row=N``: the image file of one row of the collection (for the page's thumbnails)."""
        try:
            data, media_type = collection_image(await self._collection(), request.query_params.get("row"))
        except HTTPError as e:
            return _error(e.status, {"error": str(e)})
        return Response(data, media_type=media_type, headers={"cache-control": "private, max-age=3600"})

    async def collection_map(self, request: Request) -> Response:
        """``GET /map``: the collection as 2-D points (t-SNE of up to 2,000 rows), made once per HTTP process."""
        if self.search_settings is None:
            return _error(404, {"error": NO_INDEX})
        if self._map is None or (self._map.done() and self._map.exception() is not None):
            self._map = asyncio.ensure_future(asyncio.to_thread(collection_map, self.search_settings.directory))
        try:
            return _json(await asyncio.shield(self._map))
        except (OSError, ValueError, RuntimeError) as e:
            return _error(500, {"error": f"internal error: the map of {self.search_settings.directory} could not be "
                                         f"made ({e}); restore the collection's files or restart the server"})

    async def match(self, request: Request) -> Response:
        """``POST /match``: two images (or one and ``?row=`` of the collection); which regions of each match the
        other (per feature-map cell, its best cosine similarity to a cell of the other) and their similarity."""
        deadline = time.monotonic() + self.limits.request_timeout
        try:
            model = self.models.select(request.query_params.get("model"))
            async with self._body(request) as body:
                blobs, _ = await embed_inputs(request, body, 2)
            row = request.query_params.get("row")
            if row is not None:
                blobs.append((f"row {row}", collection_image(await self._collection(), row)[0]))
            if len(blobs) != 2:
                raise HTTPError(400, f"/match compares two images: send two, or one and ?row= of the collection "
                                     f"(got {len(blobs)})")
            position, loop = self.models.position(model), asyncio.get_running_loop()
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                images = await asyncio.gather(*(loop.run_in_executor(self.decoders, _decode, data, model.input_size,
                                                                     self.limits.image, name) for name, data in blobs))
                if position not in self._match_models:
                    self._match_models[position] = await asyncio.to_thread(self.resolved[position].load, "cpu",
                                                                           verify=True)
                grids = await asyncio.to_thread(match_grids, self._match_models[position], *images)
        except TimeoutError:
            return _error(504, {"error": f"the match was not computed within the request deadline of "
                                         f"{self.limits.request_timeout:g} s; retry later"})
        except HTTPError as e:
            return _error(e.status, {"error": str(e)})
        return _json({"model": model.name, **grids})

    async def _answer(self, route: str, answer) -> Response:
        """Await a route's answer, counting it by status and timing it."""
        start = time.monotonic()
        response = await answer
        metrics().requests.labels(route, str(response.status_code)).inc()
        metrics().latency.labels(route).observe(time.monotonic() - start)
        return response

    async def search(self, request: Request) -> Response:
        """``POST /search``: images as for ``/embed``, ``?k=``; per image its k most similar rows (and k-NN label)."""
        return await self._answer("/search", self._search_route(request))

    async def _search_route(self, request: Request) -> Response:
        deadline = time.monotonic() + self.limits.request_timeout
        try:
            model = self.models.select(self.search_settings.model)
            asked = request.query_params.get("model")
            if asked is not None and not model.accepts(asked):
                raise HTTPError(400, f"the index was embedded with {model.name}, so /search embeds with it: drop "
                                f"?model= or ask for {model.name}")
            k = self._search_k(request.query_params.get("k"))
            async with self._body(request) as body:
                blobs, normalize = await embed_inputs(request, body, self.limits.max_images)
                if normalize is not None or "normalize" in request.query_params:
                    raise HTTPError(400, "normalize does not apply to /search: queries and rows are always "
                                     "L2-normalised (cosine similarity); remove it")
                vectors = await self._embed(model, blobs, True, deadline)
            index, hits = await self._search(vectors, k, deadline)
        except HTTPError as e:
            return _error(e.status, {"error": str(e)})
        for image_hits in hits:  # drift: how close each query came to the collection
            if image_hits:
                metrics().top1.labels(model.name).observe(image_hits[0]["similarity"])
        labelled = bool(index.manifest.get("classes"))
        if not self.search_settings.absolute_paths:  # the server's file system is not the client's business
            hits = [[{**hit, "path": index.relative(hit["path"])} for hit in image_hits] for image_hits in hits]
        results = [{"neighbors": h, **({"label": vote(h)} if labelled else {})} for h in hits]
        return _json({"model": model.name, "k": k, "index": {"rows": len(index), "type": index.info["type"]},
                      "results": results})

    async def no_search(self, request: Request) -> Response:
        """``POST /search`` on a server started without ``--index``: 404 saying how to start one with it."""
        return _error(404, {"error": NO_INDEX})

    async def openai_embeddings(self, request: Request) -> Response:
        """``POST /v1/embeddings``, as OpenAI's: ``input`` is base64 images or data URLs, ``model`` one of the
        served; unit-length vectors unless ``"normalize": false``."""
        return await self._answer("/v1/embeddings", self._openai_route(request))

    async def _openai_route(self, request: Request) -> Response:
        deadline = time.monotonic() + self.limits.request_timeout
        try:
            if content_kind(request) != "json":
                raise HTTPError(415, "this route takes a JSON body (content-type: application/json)")
            async with self._body(request) as body:
                payload = parse_json_object(body, self.limits.max_images)
                check_keys(payload, OPENAI_FIELDS, "the request")
                model, encoding = self._check_openai_fields(payload)
                if "input" not in payload:
                    raise HTTPError(400, "the request needs \"input\": a base64 image or data URL, or a list of "
                                     "them")
                blobs = base64_images(payload["input"], "input", self.limits.max_images)
                # Unit vectors by default, as OpenAI's (its clients take cosine as a dot product); "normalize": false
                # gives the raw features.
                normalize = parse_bool(payload["normalize"], "normalize") if "normalize" in payload else True
                vectors = await self._embed(model, blobs, normalize, deadline)
        except HTTPError as e:
            kind = "invalid_request_error" if e.status < 500 else "server_error"
            return _error(e.status, {"error": {"message": str(e), "type": kind, "param": None, "code": None}})
        if encoding == "base64":  # little-endian float32 bytes, as OpenAI sends them
            data = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
        else:
            data = list(vectors)
        return _json({"object": "list", "model": model.name, "usage": {"prompt_tokens": 0, "total_tokens": 0},
                      "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(data)]})

    async def openai_models(self, request: Request) -> Response:
        """``GET /v1/models``: the models served, as OpenAI lists models."""
        return _json({"object": "list", "data": [{"id": m.name, "object": "model", "created": self.created,
                                                  "owned_by": "ssl-zoo"} for m in self.models]})

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

    def index_ready(self) -> bool:
        """Whether this HTTP process has opened its index (or has none); starts opening it when not yet."""
        if self.search_settings is None:
            return True
        if self._index_load is None:
            self._start_index_load()
        return self._index_load.done() and self._index_load.exception() is None

    def _start_index_load(self) -> None:
        self._index_load = asyncio.ensure_future(asyncio.to_thread(NeighborIndex.load, self.search_settings.directory))

    async def _collection(self) -> NeighborIndex:
        """The index, for the page's routes that need one; a 404 saying how to start the server with one otherwise."""
        if self.search_settings is None:
            raise HTTPError(404, NO_INDEX)
        return await self._index()

    async def _index(self) -> NeighborIndex:
        """The index, opened as this HTTP process starts (in a thread); a search meanwhile waits for that load."""
        if self._index_load is None:
            self._start_index_load()
        try:
            return await asyncio.shield(self._index_load)  # the load outlives a request that times out
        except (OSError, ValueError, RuntimeError) as e:  # the files changed since the server checked them
            self._index_load = None  # the next search tries again: the files may be restored by then
            raise HTTPError(500, f"internal error: the index in {self.search_settings.directory} could not be "
                               f"opened ({e}); restore its files or restart the server with a valid --index") from e

    def _check_openai_fields(self, payload: dict) -> tuple[ServedModel, str]:
        """The model asked for (refused unless served) and the encoding; a ``dimensions`` other than the model's
        is refused."""
        model = self.models.select(payload.get("model"))
        dimensions = payload.get("dimensions")
        if dimensions is not None and dimensions != model.dim:
            raise HTTPError(400, f"dimensions={dimensions!r} is not supported: this model's embeddings have "
                             f"{model.dim} dimensions and are not truncated; omit \"dimensions\"")
        encoding = payload.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise HTTPError(400, f"encoding_format must be \"float\" or \"base64\", got {encoding!r}")
        return model, encoding

    @property
    def decoders(self) -> ThreadPoolExecutor:
        """Decoding's own threads (in this HTTP process): images cannot starve other work of the loop's pool."""
        if self._decoders is None:
            self._decoders = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode")
        return self._decoders

    async def _embed(self, model: ServedModel, blobs: list[tuple[str, bytes]], normalize: bool,
                     deadline: float) -> np.ndarray:
        """Decode the images (in this process's decoding threads) and have a worker embed them with ``model``,
        all within the request deadline."""
        loop, size, start = asyncio.get_running_loop(), model.input_size, time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                images = await asyncio.gather(*(loop.run_in_executor(self.decoders, _decode, data, size,
                                                                     self.limits.image, name) for name, data in blobs))
        except TimeoutError:
            raise HTTPError(504, f"the images were not decoded within the request deadline of "
                                 f"{self.limits.request_timeout:g} s; retry later") from None
        metrics().decode.observe(time.monotonic() - start)
        return await self._infer(self.models.position(model), np.stack(images), normalize, deadline)

    async def _infer(self, model: int, images: np.ndarray, normalize: bool, deadline: float) -> np.ndarray:
        """Queue the images for a worker and wait for its answer: 503 at once while no worker is ready (crashed
        and restarting, or refusing to start), 504 at the deadline."""
        self._check_workers()
        uid = uuid.uuid4().hex
        event = asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(event=event)
        try:
            self.request_queue.put((self.response_queue_id, uid, time.monotonic(),
                                    {"model": model, "images": images, "normalize": normalize}))
            while not event.is_set():  # a worker that dies meanwhile never answers: look again every half second
                try:
                    async with asyncio.timeout(max(0.0, min(deadline - time.monotonic(), WORKER_CHECK_SECONDS))):
                        await event.wait()
                except TimeoutError:
                    if time.monotonic() >= deadline:
                        raise
                    self._check_workers()
            response, status = self.response_buffer[uid].response
        except TimeoutError:
            raise HTTPError(504, f"no answer from the inference worker within the request deadline of "
                               f"{self.limits.request_timeout:g} s (overloaded); retry later") from None
        finally:
            self.response_buffer.pop(uid, None)
        if status == LitAPIStatus.ERROR:
            error = response if isinstance(response, HTTPError) else HTTPError(500, str(response))
            if error.status == 504:
                raise HTTPError(504, f"the request waited in the queue past the deadline of "
                                   f"{self.limits.request_timeout:g} s; retry later")
            raise HTTPError(500, f"internal error: inference failed ({error}); the server logged the details")
        return response

    def _check_workers(self) -> None:
        """503 unless an inference worker is ready; the answer is reused for ``WORKER_CHECK_SECONDS`` (each look
        is a round trip to LitServe's manager process)."""
        now = time.monotonic()
        if now - self._workers_seen[0] >= WORKER_CHECK_SECONDS:
            self._workers_seen = (now, any_worker_ready(self._server))
        if not self._workers_seen[1]:
            raise HTTPError(503, "no inference worker is ready (one crashed and is restarting, or cannot start: "
                                 "see the server's log); GET /ready says when to retry")


def _decode(data: bytes, size: int, limits, name: str) -> np.ndarray:
    """``decode_image``, counting a refused image by its status."""
    try:
        return decode_image(data, size, limits, name)
    except HTTPError as e:
        metrics().decode_failures.labels("too large" if e.status == 413 else "unreadable or refused").inc()
        raise


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
    if status in (429, 503):
        response.headers["retry-after"] = "1"
    return response
