"""Hostile image files, made in memory in milliseconds: decoding bombs that pass pixel limits, and files that
are not what their name says. The tests use them, and so does ``benchmarks/attack.py``."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n"
       b"%%EOF\n")


def jpeg(size: tuple[int, int] = (64, 48), progressive: bool = False) -> bytes:
    """A small real JPEG (a gradient), baseline or progressive."""
    width, height = size
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, "JPEG", progressive=progressive, quality=90)
    return buf.getvalue()


def declared_size(data: bytes, width: int, height: int) -> bytes:
    """A JPEG's bytes with the size its frame header declares changed (the scans stay those of the small
    image): a progressive one then makes the decoder hold coefficients for ``width`` x ``height``."""
    for i in range(2, len(data) - 9):
        if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2):
            return data[:i + 5] + struct.pack(">HH", height, width) + data[i + 9:]
    raise ValueError("no frame header found")


def repeated_scans(data: bytes, copies: int) -> bytes:
    """A progressive JPEG with its last scan repeated ``copies`` times before the end: each repeat is another
    pass over every coefficient, a few bytes each."""
    last = data.rindex(b"\xff\xda")
    end = data.rindex(b"\xff\xd9")
    return data[:end] + data[last:end] * copies + data[end:]


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png(width: int = 8, height: int = 8, extra_chunks: list[bytes] = (), rows: bytes | None = None) -> bytes:
    """An RGB PNG of gray pixels; ``extra_chunks`` go between the header and the image data."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    if rows is None:
        rows = zlib.compress((b"\x00" + b"\x80" * 3 * width) * height)
    return b"\x89PNG\r\n\x1a\n" + header + b"".join(extra_chunks) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")


def icc_profiles(count: int) -> bytes:
    """A PNG with ``count`` colour-profile (iCCP) chunks before its image data."""
    profile = png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(b"\x00" * 4096))
    return png(extra_chunks=[profile] * count)


def long_thin_png(length: int) -> bytes:
    """A 1 x ``length`` PNG whose image data compresses to almost nothing."""
    compressor, zeros = zlib.compressobj(9), bytes(1 << 24)
    parts, remaining = [compressor.compress(b"\x00")], 3 * length  # the row's filter byte, then its pixels
    while remaining > 0:
        parts.append(compressor.compress(zeros[:min(remaining, len(zeros))]))
        remaining -= len(zeros)
    parts.append(compressor.flush())
    return png(length, 1, rows=b"".join(parts))
