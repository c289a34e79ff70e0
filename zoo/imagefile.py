"""Image files to RGB arrays: ``image_to_array`` for any image (EXIF orientation, reduced-scale JPEG decoding,
short side resized, centre crop), and ``decode_image`` / ``decode_file`` for files nobody vetted (uploads,
folders you did not create), with bounded work.

Pixel limits alone do not bound a decode: a progressive JPEG holds every DCT coefficient of the whole
image in memory however small it is decoded (an 11,585 x 11,585 one: ~780 MB), each of its scans is a
pass over them (1,000 duplicate scans in 400 KB: ~25 s of CPU), and a PNG with thousands of ``iCCP``
chunks keeps ``Image.open`` busy for tens of seconds before any limit is read. So the file's structure
is read first, by walking its markers or chunks (a few ms, nothing decoded), and refused when it asks
for more work than a real photograph does; then Pillow opens it, restricted to the allowed formats, and
the declared size, aspect ratio and decoded size are checked before any pixel is decoded. The limits
are the server's (``ssl-zoo serve``) and ``ssl-zoo embed``'s and ``neighbors``', each a flag there.
"""

from __future__ import annotations

import io
import math
import os
import re
import stat
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # a camera's MPO opens through JPEG
FORMAT_NAMES = "JPEG, PNG, WebP, GIF, BMP or TIFF"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")  # the file names of FORMATS
_SOF_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
_SOF = {0xC0, 0xC1, 0xC3, 0xC5, 0xC7, 0xC9, 0xCB, 0xCD, 0xCF} | _SOF_PROGRESSIVE
_MARKER_AFTER_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7]")  # 0xFF00 is a stuffed byte, 0xFFD0-D7 restarts


@dataclass(frozen=True)
class ImageLimits:
    """Per-image limits: pixels once decoded, pixels the file declares, aspect ratio, and the work a file's
    structure may ask for (JPEG scans, progressive JPEG size, PNG chunks before the image data)."""

    max_pixels: int = 4096 * 4096
    max_file_pixels: int = 128 * 1024 * 1024
    max_aspect_ratio: float = 32.0
    max_jpeg_scans: int = 32  # real encoders write 1 (baseline) to ~12 (progressive; mozjpeg's most)
    max_progressive_pixels: int = 4096 * 4096  # all coefficients in memory: ~3 bytes per pixel
    max_png_chunks: int = 128  # ancillary chunks before the image data; a photo's PNG has a handful
    max_file_bytes: int = 64 * 1024 * 1024


class ImageRejected(ValueError):
    """An image refused, before or while decoding: ``too_large`` for a size limit, else a bad or unreadable file."""

    def __init__(self, message: str, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


def image_to_array(image: Image.Image | str | os.PathLike | bytes, size: int) -> np.ndarray:
    """One image (PIL image, path or encoded bytes) -> RGB uint8 ``(size, size, 3)``.

    EXIF orientation is applied (``ImageOps.exif_transpose``, as timm's and torchvision's users do). Any
    mode is converted to RGB (16- and 32-bit integer images are scaled to 8 bits). Other sizes
    get the short side resized to ``size`` and a center crop, as ``Preprocess`` does, with work
    bounded by the output: a JPEG is decoded at a reduced scale (Pillow's ``draft``) and only the
    central square is resampled, so a 1 x 1,000,000 strip costs no more than a small image.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        image = io.BytesIO(bytes(image))
    if isinstance(image, (str, os.PathLike, io.IOBase)):
        with Image.open(image) as im:
            return image_to_array(im, size)
    if not isinstance(image, Image.Image):
        raise TypeError(f"cannot read an image from {type(image).__name__}; pass a path, bytes, a PIL image, "
                        "a uint8 (H, W, 3) array or a float (3, H, W) tensor")
    draft_for(image, size)
    image = ImageOps.exif_transpose(image)  # a phone photo taken in portrait is stored sideways with an EXIF tag
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        scale16 = 257.0 if image.mode.startswith("I;16") or np.asarray(image).max() > 255 else 1.0
        image = Image.fromarray((np.asarray(image, dtype=np.float32) / scale16).clip(0, 255).astype(np.uint8))
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (size, size):
        width, height = image.size
        short = min(width, height)
        left, top = (width - short) / 2, (height - short) / 2
        image = image.resize((size, size), Image.BILINEAR, box=(left, top, left + short, top + short))
    return np.asarray(image)


def draft_for(image: Image.Image, size: int) -> None:
    """Have Pillow decode a JPEG at the smallest scale whose short side is still at least ``size`` (its
    ``draft``: DCT scaling, 1/2 to 1/8), so a 20-megapixel photo decodes to well under a megapixel; other
    formats, and JPEGs already that small, are left as they are."""
    short = min(image.size)
    if image.format in ("JPEG", "MPO") and short > size:  # MPO: the JPEG variant cameras write
        scale = size / short
        image.draft("RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale)))


def decode_image(data: bytes, size: int, limits: ImageLimits = ImageLimits(), name: str = "image") -> np.ndarray:
    """One image file's bytes -> RGB uint8 ``(size, size, 3)`` (``image_to_array``: EXIF orientation applied,
    short side resized, centre crop), or ``ImageRejected`` naming ``name``, what was wrong and what to send."""
    return decode_bytes(data, size, limits, name)[0]


def decode_file(path: str, size: int, limits: ImageLimits = ImageLimits()) -> tuple[np.ndarray, tuple[int, int]]:
    """``decode_image`` of a file, read only when it is a regular file within ``max_file_bytes``; also the
    image's own (width, height)."""
    info = os.stat(path)  # follows a symlink: what the path names
    if not stat.S_ISREG(info.st_mode):
        raise ImageRejected(f"{path} is not a regular file (a FIFO, device or folder): skipped")
    if info.st_size > limits.max_file_bytes:
        raise ImageRejected(f"{path} is {info.st_size} bytes, over the limit of {limits.max_file_bytes}",
                            too_large=True)
    with open(path, "rb") as f:
        return decode_bytes(f.read(limits.max_file_bytes + 1), size, limits, path)


def decode_bytes(data: bytes, size: int, limits: ImageLimits = ImageLimits(),
                 name: str = "image") -> tuple[np.ndarray, tuple[int, int]]:
    """``decode_image``, and the image's own (width, height)."""
    if not data:
        raise ImageRejected(f"{name} is empty: send the bytes of a {FORMAT_NAMES} image")
    if len(data) > limits.max_file_bytes:
        raise ImageRejected(f"{name} is {len(data)} bytes, over the limit of {limits.max_file_bytes}", too_large=True)
    check_structure(data, limits, name)
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 MP and refuses from 179 MP; the limits below are these.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=FORMATS)
        declared = im.size  # before a JPEG's draft shrinks it
        _check_size(im, size, limits, name)
        return image_to_array(im, size), declared
    except ImageRejected:
        raise
    except UnidentifiedImageError as e:
        raise ImageRejected(f"{name} is not a {FORMAT_NAMES} image (the formats read here); send one of those") from e
    except Image.DecompressionBombError as e:
        raise ImageRejected(f"{name} is too large to decode ({e}); resize it first", too_large=True) from e
    except Exception as e:  # anything Pillow raises on a damaged file is the file's fault, never a crash
        raise ImageRejected(f"{name} is corrupt, truncated or unsupported ({type(e).__name__}: {e}); "
                            "send the complete file") from e


def check_structure(data: bytes, limits: ImageLimits, name: str = "image") -> None:
    """Refuse a JPEG with more scans than ``max_jpeg_scans`` or a progressive one over
    ``max_progressive_pixels``, and a PNG with more than ``max_png_chunks`` ancillary chunks (or a second
    ``iCCP``) before its image data, reading only markers and chunk headers."""
    if data[:2] == b"\xff\xd8":
        _check_jpeg(data, limits, name)
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        _check_png(data, limits, name)


def _check_jpeg(data: bytes, limits: ImageLimits, name: str) -> None:
    pos, scans, progressive, pixels = 2, 0, False, 0
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # end of image
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in _SOF and pos + 9 <= len(data):
            progressive = marker in _SOF_PROGRESSIVE
            height, width = int.from_bytes(data[pos + 5:pos + 7], "big"), int.from_bytes(data[pos + 7:pos + 9], "big")
            pixels = width * height
            if progressive and pixels > limits.max_progressive_pixels:
                raise ImageRejected(f"{name} is a progressive JPEG of {width}x{height} = {pixels} pixels, over the "
                                    f"limit of {limits.max_progressive_pixels} for progressive JPEGs (decoding one "
                                    "holds the whole image in memory); send it baseline or smaller", too_large=True)
        pos += 2 + length
        if marker == 0xDA:  # a scan: skip its entropy-coded data to the next marker
            scans += 1
            if scans > limits.max_jpeg_scans:
                raise ImageRejected(f"{name} is a JPEG of more than {limits.max_jpeg_scans} scans (real encoders "
                                    "write at most about 12; each scan is a pass over the whole image): re-encode it")
            found = _MARKER_AFTER_SCAN.search(data, pos)
            pos = found.start() if found else len(data)


def _check_png(data: bytes, limits: ImageLimits, name: str) -> None:
    pos, chunks, profiles = 8, 0, 0
    while pos + 8 <= len(data):
        length, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        if kind in (b"IDAT", b"IEND"):
            return
        chunks += kind[:1].islower()  # ancillary chunks (text, profiles, ...): the critical ones are few and fixed
        profiles += kind == b"iCCP"
        if chunks > limits.max_png_chunks or profiles > 1:
            what = "a second colour profile (iCCP)" if profiles > 1 else f"more than {limits.max_png_chunks} chunks"
            raise ImageRejected(f"{name} is a PNG with {what} before its image data: re-save it")
        pos += 12 + length  # length, type, data, CRC


def _check_size(im: Image.Image, size: int, limits: ImageLimits, name: str) -> None:
    """Refuse, before decoding, an image whose declared size, shape or decoded size is over the limits;
    a large JPEG is set to decode at a reduced scale first."""
    width, height = im.size
    if width < 1 or height < 1:
        raise ImageRejected(f"{name} is {width}x{height} pixels: it has no pixels")
    if width * height > limits.max_file_pixels:
        raise ImageRejected(f"{name} is {width}x{height} = {width * height} pixels, over the limit of "
                            f"{limits.max_file_pixels}; resize it first", too_large=True)
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect_ratio:
        raise ImageRejected(f"{name} is {width}x{height} pixels, an aspect ratio of {ratio:.0f}:1, over the limit "
                            f"of {limits.max_aspect_ratio:g}:1 (the model sees only its central square); crop it first")
    draft_for(im, size)  # the same target as image_to_array, whose own draft call is then a no-op
    decoded = im.size[0] * im.size[1]
    if decoded > limits.max_pixels:
        raise ImageRejected(f"{name} decodes to {im.size[0]}x{im.size[1]} = {decoded} pixels, over the limit of "
                            f"{limits.max_pixels}; resize it first (JPEGs are decoded at a reduced scale, so a "
                            "large JPEG passes where a PNG of the same size does not)", too_large=True)
