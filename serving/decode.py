"""Uploaded bytes -> validated RGB uint8 images, with 4xx errors that say what was wrong.

``decode_image`` raises nothing but ``HTTPError``: every failure of Pillow on untrusted bytes is
the client's file. The work is bounded before anything is decoded: the file's own size (a
decompression-bomb guard), its aspect ratio, and the size it will be decoded at (JPEGs are decoded
at a reduced scale with Pillow's ``draft``, so a 20-megapixel photo decodes to well under a megapixel).
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from zoo.transforms import draft_for, image_to_array

from .config import ImageLimits
from .errors import HTTPError

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
FORMAT_NAMES = "JPEG, PNG, WebP, GIF, BMP or TIFF"


def decode_image(data: bytes, size: int, limits: ImageLimits = ImageLimits(), name: str = "image") -> np.ndarray:
    """Decode one image file (JPEG, PNG, WebP, GIF, BMP or TIFF; any mode) to RGB uint8 ``(size, size, 3)``."""
    if not data:
        raise HTTPError(400, f"{name} is empty: send the bytes of a {FORMAT_NAMES} image")
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 MP and refuses from 179 MP; the limits below are the server's own.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=FORMATS)
        _check_size(im, size, limits, name)
        return image_to_array(im, size)
    except HTTPError:
        raise
    except UnidentifiedImageError as e:
        raise HTTPError(400, f"{name} is not a {FORMAT_NAMES} image (the formats this server reads); "
                         "send one of those") from e
    except Image.DecompressionBombError as e:
        raise HTTPError(413, f"{name} is too large to decode ({e}); resize it before sending") from e
    except Exception as e:  # anything Pillow raises on a damaged file is the client's file, never a 500
        raise HTTPError(400, f"{name} is corrupt, truncated or unsupported ({type(e).__name__}: {e}); "
                         "send the complete file") from e


def _check_size(im: Image.Image, size: int, limits: ImageLimits, name: str) -> None:
    """Refuse, before decoding, an image whose file size, shape or decoded size is over the limits;
    a large JPEG is set to decode at a reduced scale first."""
    width, height = im.size
    if width < 1 or height < 1:
        raise HTTPError(400, f"{name} is {width}x{height} pixels: it has no pixels")
    if width * height > limits.max_file_pixels:
        raise HTTPError(413, f"{name} is {width}x{height} = {width * height} pixels, over the server's limit of "
                         f"{limits.max_file_pixels}; resize it before sending")
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect_ratio:
        raise HTTPError(400, f"{name} is {width}x{height} pixels, an aspect ratio of {ratio:.0f}:1, over the "
                         f"server's limit of {limits.max_aspect_ratio:g}:1 (the model sees only its central "
                         "square); crop it before sending")
    draft_for(im, size)  # the same target as image_to_array, whose own draft call is then a no-op
    decoded = im.size[0] * im.size[1]
    if decoded > limits.max_pixels:
        raise HTTPError(413, f"{name} decodes to {im.size[0]}x{im.size[1]} = {decoded} pixels, over the server's "
                         f"limit of {limits.max_pixels}; resize it before sending (JPEGs are decoded at a reduced "
                         "scale, so a large JPEG passes where a PNG of the same size does not)")


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
