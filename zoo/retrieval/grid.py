"""The picture of a search: each query image, then its neighbours captioned with label and similarity."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageOps

from ..io import atomic_write
from .images import read_image_bytes

TILE_MAX_BYTES = 64 * 2**20  # a neighbour's file larger than this is drawn as a grey tile


def write_grid(queries: list[str | os.PathLike | Image.Image], results: list[list[dict[str, Any]]],
               path: str | os.PathLike, tile: int = 96) -> Path:
    """A PNG with one line per query: the query image, then its neighbours captioned with label
    (or file name) and similarity."""
    caption = 28
    columns = 1 + max((len(r) for r in results), default=0)
    grid = Image.new("RGB", (columns * tile, len(queries) * (tile + caption)), "white")
    draw = ImageDraw.Draw(grid)
    for i, cells in enumerate(grid_cells(queries, results)):
        top = i * (tile + caption)
        for j, (image, title, score) in enumerate(cells):
            grid.paste(_tile(image, tile), (j * tile, top))
            draw.text((j * tile + 3, top + tile + 1), f"{title}\n{score}", fill="black")
    path = Path(path)
    atomic_write(path, lambda f: grid.save(f, format="PNG"))
    return path


def grid_cells(queries: list[str | os.PathLike | Image.Image],
               results: list[list[dict[str, Any]]]) -> list[list[tuple[Any, str, str]]]:
    """Per grid line, its cells ``(image, title, second caption line)``: the query titled by its file name
    ("query N" for an in-memory image), then each neighbour by label (or file name) and similarity."""
    lines = []
    for i, (query, hits) in enumerate(zip(queries, results)):
        name = Path(query).name if isinstance(query, (str, os.PathLike)) else f"query {i + 1}"
        lines.append([(query, name, "query")] + [(h["path"], h["label"] or Path(h["path"]).name,
                                                 f"{h['similarity']:.3f}") for h in hits])
    return lines


def _tile(image: str | os.PathLike | Image.Image, size: int) -> Image.Image:
    """``image`` (a path or a PIL image) fitted to a square tile; a grey tile when it cannot be read."""
    try:
        if isinstance(image, Image.Image):
            return ImageOps.fit(image.convert("RGB"), (size, size), Image.NEAREST)
        with Image.open(io.BytesIO(read_image_bytes(os.fspath(image), TILE_MAX_BYTES))) as im:
            return ImageOps.fit(im.convert("RGB"), (size, size), Image.NEAREST)
    except (OSError, ValueError, KeyError, tarfile.TarError):
        return Image.new("RGB", (size, size), (160, 160, 160))
