"""Uploaded bytes -> validated RGB uint8 images, with 4xx errors that say what was wrong."""

from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from zoo.transforms import image_to_array


class BadRequest(ValueError):
    """A client error: the HTTP status and a message saying what was wrong and what to send."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def decode_image(data: bytes, size: int, max_pixels: int, name: str = "image") -> np.ndarray:
    """Decode one image file (any format and mode PIL reads) to RGB uint8 ``(size, size, 3)``."""
    if not data:
        raise BadRequest(400, f"{name} is empty: send the bytes of a JPEG, PNG, WebP, BMP or TIFF image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            pixels = im.width * im.height
            if pixels > max_pixels:
                raise BadRequest(413, f"{name} is {im.width}x{im.height} = {pixels} pixels, over the server's limit "
                                 f"of {max_pixels}; resize it before sending")
            im.load()
    except BadRequest:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadRequest(400 if isinstance(e, UnidentifiedImageError) else 413,
                         f"{name} is not a readable image ({e}); send a JPEG, PNG, WebP, BMP or TIFF file") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise BadRequest(400, f"{name} is corrupt or truncated ({e}); send the complete file") from e
    return image_to_array(im, size)


def decode_base64(text: object, name: str) -> bytes:
    """A base64 string or ``data:image/...;base64,`` URL -> bytes."""
    if not isinstance(text, str):
        raise BadRequest(400, f"{name} must be a base64 string or a data URL, got {type(text).__name__}")
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise BadRequest(400, f"{name}: only base64 data URLs are supported (data:image/png;base64,...)")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(400, f"{name} is not valid base64 ({e})") from e
