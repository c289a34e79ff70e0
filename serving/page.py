"""The web page ``GET /`` serves, and what it asks the server for beyond ``/search`` and ``/embed``: a
collection's images by row, a 2-D map of the collection, and match heatmaps between two images.

The page's files (``serving/static``) ship with the package and load nothing from outside: it works
with no internet. The map is t-SNE (``zoo.eval.figures.embedding_2d``) of at most ``MAP_POINTS`` rows,
computed once per HTTP process on the first ``GET /map``.
"""

from __future__ import annotations

import mimetypes
import tarfile
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.retrieval.images import read_image_bytes
from zoo.retrieval.index import NeighborIndex
from zoo.retrieval.shards import load_collection

from .errors import HTTPError

STATIC = Path(__file__).resolve().parent / "static"
PAGE_FILES = {"/": "index.html", "/page/app.js": "app.js", "/page/style.css": "style.css"}
MAP_POINTS = 2000  # rows on the map: t-SNE of 2,000 points takes seconds on 2 cores, of 50,000 many minutes
COLLECTION_IMAGE_BYTES = 20 * 2**20  # a collection file larger than this is not sent to the page


@cache
def page_file(path: str) -> tuple[bytes, str]:
    """The bytes and media type of one of the page's files, by its route."""
    name = PAGE_FILES[path]
    return (STATIC / name).read_bytes(), mimetypes.guess_type(name)[0] or "application/octet-stream"


def collection_image(index: NeighborIndex, raw_row: str | None) -> tuple[bytes, str]:
    """The file of row ``raw_row`` of the collection (only files the index holds), and its media type."""
    try:
        row = int(raw_row or "")
    except ValueError:
        raise HTTPError(400, f"row must be an integer from 0 to {len(index) - 1}, got {raw_row!r}") from None
    if not 0 <= row < len(index):
        raise HTTPError(404, f"row {row} is not in the collection (rows 0 to {len(index) - 1})")
    path = Path(index.metadata["path"][row].as_py())
    try:
        data = read_image_bytes(str(path), COLLECTION_IMAGE_BYTES)
    except (OSError, KeyError, tarfile.TarError) as e:
        raise HTTPError(404, f"row {row}'s file {index.relative(str(path))} cannot be sent ({e}); the collection "
                             "changed since it was embedded") from None
    return data, mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def collection_map(directory: str) -> dict[str, Any]:
    """2-D t-SNE coordinates of (at most ``MAP_POINTS``, evenly spaced) rows of an embed output, scaled to
    [0, 1], with each row's number and label."""
    from zoo.eval.figures import embedding_2d

    vectors, table = load_collection(directory)
    rows = np.unique(np.linspace(0, len(vectors) - 1, min(MAP_POINTS, len(vectors))).round().astype(int))
    xy = embedding_2d(torch.from_numpy(np.asarray(vectors[rows], dtype=np.float32)))
    xy = (xy - xy.min(0)) / np.maximum(xy.max(0) - xy.min(0), 1e-12)
    labels = table["label"].to_pylist() if "label" in table.column_names else [None] * len(vectors)
    return {"points": [{"row": int(r), "x": round(float(x), 4), "y": round(float(y), 4), "label": labels[r]}
                       for r, (x, y) in zip(rows, xy)]}


def match_grids(encoder: torch.nn.Module, a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Which region of image ``a`` matches which of ``b`` (uint8 ``(H, W, 3)`` each): per cell of each image's
    feature map its best cosine similarity to a cell of the other, and the images' cosine similarity."""
    from zoo.eval.figures import cell_matches

    best_a, best_b = cell_matches(encoder, a[None], b[None])
    with torch.inference_mode():
        pooled = encoder(encoder.preprocess(np.stack([a, b])))
    cosine = torch.nn.functional.cosine_similarity(pooled[:1], pooled[1:]).item()
    return {"query": best_a[0].tolist(), "other": best_b[0].tolist(), "similarity": round(cosine, 4)}
