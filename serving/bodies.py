"""HTTP request bodies -> image files and options, for every route: the body's size and time limits,
the content types accepted, one JSON parser and one boolean parser."""

from __future__ import annotations

import asyncio
import ctypes
import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from starlette.formparsers import MultiPartParser
from starlette.requests import ClientDisconnect, Request

from .decode import decode_base64
from .errors import HTTPError

RAW_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff",
                   "application/octet-stream")
ACCEPTED = ("multipart/form-data (image files in field 'images'), application/json ({\"images\": [base64 or "
            f"data URL, ...]}}) or one raw image as the body ({', '.join(RAW_IMAGE_TYPES)})")
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"RIFF", b"BM", b"II*\x00", b"MM\x00*")
_MAX_CONTAINERS = 32  # '[' and '{' in a JSON body: the API's bodies have a handful
_TRIM_AFTER_BYTES = 64 * 1024 * 1024
_LIBC = ctypes.CDLL(None)  # glibc keeps freed heap memory (bodies arrive in 64 KB chunks) unless asked to return it
_release_free_memory = functools.partial(_LIBC.malloc_trim, 0) if hasattr(_LIBC, "malloc_trim") else (lambda: None)


class BodyBudget:
    """Bytes of request bodies one HTTP process holds at once: past ``limit`` a request gets 429 (without
    it, every allowed connection could hold a body of the maximum size, and the deadline only bounds how long).
    Once all bodies are released after large ones, the freed memory is handed back to the system."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used, self._held_since_trim = limit, 0, 0

    def take(self, n: int) -> None:
        """Hold ``n`` more bytes, or refuse the request."""
        if self.used + n > self.limit:
            raise HTTPError(429, f"the server is busy receiving other requests ({self.limit} bytes of bodies in "
                             "flight); retry in a moment")
        self.used += n

    def give_back(self, n: int) -> None:
        """Release ``n`` bytes."""
        self.used -= n
        self._held_since_trim += n
        if self.used == 0 and self._held_since_trim >= _TRIM_AFTER_BYTES:
            self._held_since_trim = 0
            asyncio.get_running_loop().call_soon(_release_free_memory)  # once the handler has dropped the body


@asynccontextmanager
async def request_body(request: Request, max_bytes: int, timeout: float, budget: BodyBudget) -> AsyncIterator[bytes]:
    """The whole request body, held against ``budget`` until the block ends; refused over ``max_bytes``
    (413), when it takes over ``timeout`` s to arrive (408), or when the budget is spent (429)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise HTTPError(413, f"request body of {declared} bytes is over the limit of {max_bytes}; "
                         "send fewer or smaller images per request")
    chunks, held = [], 0
    try:
        try:
            async with asyncio.timeout(timeout):
                async for chunk in request.stream():
                    if held + len(chunk) > max_bytes:
                        raise HTTPError(413, f"request body is over the limit of {max_bytes} bytes; "
                                         "send fewer or smaller images per request")
                    budget.take(len(chunk))
                    held += len(chunk)
                    chunks.append(chunk)
        except TimeoutError:
            raise HTTPError(408, f"the request body did not arrive within {timeout:g} s ({held} bytes came); "
                             "send it faster or in smaller requests") from None
        except ClientDisconnect:
            raise HTTPError(400, "the client disconnected before sending the whole body") from None
        body, chunks = b"".join(chunks), None
        yield body
    finally:
        budget.give_back(held)


def content_kind(request: Request) -> str:
    """``multipart``, ``json`` (also when no content type is given) or ``image``; 415 for anything else."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype == "multipart/form-data":
        return "multipart"
    if ctype in ("", "application/json") or ctype.endswith("+json"):
        return "json"
    if ctype in RAW_IMAGE_TYPES:
        return "image"
    raise HTTPError(415, f"unsupported content type {ctype!r}: send {ACCEPTED}")


def parse_json_object(body: bytes, max_images: int) -> dict[str, Any]:
    """A JSON object, refused unless its structure fits this API's bodies."""
    if not body:
        raise HTTPError(400, f"empty request body: send {ACCEPTED}")
    # Bounded before parsing: 32 MB of "[[[[" or "{},{}," would become millions of Python objects,
    # about 20x the body in memory. Base64 and data URLs hold no brackets and one comma per image.
    if body.count(b"[") + body.count(b"{") > _MAX_CONTAINERS or body.count(b",") > 2 * max_images + 32:
        raise HTTPError(400, "the JSON body has more structure than this API takes: send an object such as "
                         "{\"images\": [\"<base64>\", ...]} (or {\"input\": [...]} for /v1/embeddings)")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        hint = (" The body looks like a raw image file: send it with its content type (e.g. content-type: "
                "image/jpeg), or as multipart or base64 JSON.") if body.startswith(_IMAGE_MAGIC) else ""
        raise HTTPError(400, f"malformed JSON ({e}).{hint}") from e
    if not isinstance(payload, dict):
        raise HTTPError(400, f"the JSON body must be an object, got {type(payload).__name__}: send "
                         "{\"images\": [\"<base64>\", ...]} (or {\"input\": [...]} for /v1/embeddings)")
    return payload


def check_keys(payload: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    """Refuse fields this route does not know (a typo such as "normalise" would otherwise pass silently)."""
    unknown = sorted(set(payload) - set(known))
    if unknown:
        raise HTTPError(400, f"unknown field(s) {', '.join(map(repr, unknown))} in {where}; the fields are "
                         f"{', '.join(known)}")


def parse_bool(value: object, name: str) -> bool:
    """true/false or 1/0 (JSON booleans or numbers, or those words in a query string or form field)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "false", "0"):
        return value.strip().lower() in ("true", "1")
    raise HTTPError(400, f"{name} must be true or false (or 1 or 0), got {value!r}")


def check_count(n: int, max_images: int) -> None:
    """At least one image and at most ``max_images`` per request."""
    if n == 0:
        raise HTTPError(400, "no images in the request")
    if n > max_images:
        raise HTTPError(413, f"{n} images in one request, over the limit of {max_images}; split the request")


def base64_images(values: object, field: str, max_images: int) -> list[tuple[str, bytes]]:
    """A JSON list (or one string) of base64 images or data URLs -> named image files."""
    values = [values] if isinstance(values, str) else values
    if not isinstance(values, list):
        raise HTTPError(400, f"\"{field}\" must be a list of images, each base64 or a data URL "
                         "(data:image/jpeg;base64,...)")
    check_count(len(values), max_images)
    return [(f"{field}[{i}]", decode_base64(v, f"{field}[{i}]")) for i, v in enumerate(values)]


async def embed_inputs(request: Request, body: bytes, max_images: int) -> tuple[list[tuple[str, bytes]], Any]:
    """``POST /embed``'s images (named files) and its ``normalize`` field (None when absent), from a
    multipart form, a JSON object or a raw image body."""
    kind = content_kind(request)
    if kind == "image":
        if not body:
            raise HTTPError(400, "empty request body: send the image file's bytes")
        return [("the request body", body)], None
    if kind == "json":
        payload = parse_json_object(body, max_images)
        check_keys(payload, ("images", "normalize"), "the JSON body")
        if "images" not in payload:
            raise HTTPError(400, "the JSON body needs \"images\": a list of base64 images or data URLs")
        return base64_images(payload["images"], "images", max_images), payload.get("normalize")
    return await _multipart_inputs(request, body, max_images)


async def _multipart_inputs(request: Request, body: bytes, max_images: int) -> tuple[list[tuple[str, bytes]], Any]:
    async def stream() -> AsyncIterator[bytes]:
        yield body

    try:  # starlette's parser, fed the body already read (and limited) above
        form = await MultiPartParser(request.headers, stream(), max_files=max_images + 1, max_fields=8,
                                     max_part_size=64 * 1024).parse()
    except Exception as e:  # any failure of the parser on client bytes is a malformed body
        raise HTTPError(400, f"malformed multipart body ({e}); send each image as a file in field 'images'") from e
    check_keys(dict(form), ("images", "normalize"), "the multipart form")
    files = form.getlist("images")
    if not files:
        raise HTTPError(400, "the multipart form has no field 'images': send each image as a file in field 'images'")
    check_count(len(files), max_images)
    blobs = []
    for i, f in enumerate(files):
        if isinstance(f, str):
            raise HTTPError(400, f"field 'images' #{i} is text, not a file upload")
        blobs.append((f"images[{i}] ({f.filename})", await f.read()))
    normalize = form.getlist("normalize")
    if len(set(map(str, normalize))) > 1:
        raise HTTPError(400, f"the multipart form gives normalize {len(normalize)} times with different values: "
                        "send it once")
    return blobs, normalize[0] if normalize else None
