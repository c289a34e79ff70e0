"""Uploaded bytes -> validated RGB uint8 images, with 4xx errors that say what was wrong.

``decode_image`` raises nothing but ``HTTPError``: every failure of Pillow on untrusted bytes is the
client's file. The work is bounded before anything is decoded (``zoo.imagefile``: the file's structure,
its declared size and aspect ratio, the size it will be decoded at), and the server runs it in a pool
of its own under the request's deadline (``routes``).
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

from zoo.imagefile import FORMAT_NAMES, ImageLimits, ImageRejected
from zoo.imagefile import decode_image as decode_untrusted

from .errors import HTTPError


def decode_image(data: bytes, size: int, limits: ImageLimits = ImageLimits(), name: str = "image") -> np.ndarray:
    """Decode one image file (JPEG, PNG, WebP, GIF, BMP or TIFF; any mode) to RGB uint8 ``(size, size, 3)``:
    413 for a file over a size limit, 400 for anything else wrong with it."""
    try:
        return decode_untrusted(data, size, limits, name)
    except ImageRejected as e:
        raise HTTPError(413 if e.too_large else 400, str(e)) from e


def decode_base64(text: object, name: str) -> bytes:
    """A base64 string or ``data:image/...;base64,`` URL -> bytes."""
    hint = (f"this endpoint embeds images: send each as base64 or as a data URL "
            f"(data:image/jpeg;base64,...) of a {FORMAT_NAMES} file, not text")
    if isinstance(text, list) and text and all(isinstance(t, int) for t in text):
        raise HTTPError(400, f"{name} is a list of numbers (token ids?); {hint}")
    if not isinstance(text, str):
        raise HTTPError(400, f"{name} must be a string (base64 or a data URL), got {type(text).__name__}; {hint}")
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise HTTPError(400, f"{name}: only base64 data URLs are supported (data:image/png;base64,...)")
    if "\n" in text:  # base64 wrapped at 76 columns (the base64 tool's default)
        text = text.replace("\r", "").replace("\n", "")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise HTTPError(400, f"{name} is not valid base64 ({e}); {hint}") from e
