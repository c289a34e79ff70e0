"""Nearest neighbours over an ``ssl-zoo embed`` output, with faiss: ``ssl-zoo index``, ``ssl-zoo neighbors``
and ``NeighborIndex`` (search by vectors or images, k-NN label prediction).

Similarity is cosine: rows and queries are L2-normalised and searched by inner product. Up to
``FLAT_MAX_ROWS`` rows the index is exact (``IndexFlatIP``); above, an IVF-Flat index with
``nlist ~ 4 sqrt(N)`` lists, ``nprobe = DEFAULT_NPROBE`` (both chosen by ``benchmarks/index_recall.py``).
``index.faiss`` and ``index.json`` (type, metric, nlist, nprobe, rows, the manifest's sha256) are
written beside the shards.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import defaultdict
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from ..io import atomic_write, sha256_file, write_json
from ..model import Encoder
from . import DEFAULT_NPROBE, FLAT_MAX_ROWS, require
from .shards import MANIFEST, iter_shards, read_manifest, read_metadata, with_rows

if TYPE_CHECKING:
    import pyarrow as pa

INDEX_FILE, INDEX_INFO = "index.faiss", "index.json"
TRAIN_POINTS_PER_LIST = 64  # k-means sample size per IVF list (faiss warns below 39)


def _unit(vectors: np.ndarray) -> np.ndarray:
    """float32 copy with L2-normalised rows, normalised in float64 (a float32 norm of 1e38 overflows); zero rows
    stay zero."""
    x = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1), dtype=np.float32)


def default_nlist(rows: int) -> int:
    """IVF lists for ``rows`` vectors: ``4 sqrt(rows)``, with at least 39 training points per list."""
    return max(1, min(round(4 * math.sqrt(rows)), rows // 39))


def build_index(directory: str | os.PathLike, *, kind: str = "auto", nlist: int | None = None,
                nprobe: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Build ``index.faiss`` + ``index.json`` over an embed output; ``kind``: ``auto``, ``flat`` or ``ivf``.
    Returns the ``index.json`` content."""
    faiss = require("faiss")
    directory = Path(directory)
    manifest = read_manifest(directory)
    rows, dim = manifest["rows"], manifest["feature_dim"]
    if rows == 0:
        raise ValueError(f"{directory} holds no embeddings (every file failed): nothing to index")
    if kind not in ("auto", "flat", "ivf"):
        raise ValueError(f"index kind must be auto, flat or ivf, got {kind!r}")
    if kind == "auto":
        kind = "flat" if rows <= FLAT_MAX_ROWS else "ivf"
    info: dict[str, Any] = {"type": kind, "metric": "inner product of L2-normalised vectors (cosine)",
                            "rows": rows, "dim": dim}
    if kind == "flat":
        if nlist is not None or nprobe is not None:
            raise ValueError(f"nlist and nprobe apply to an IVF index, not to an exact one (flat: the default up to "
                             f"{FLAT_MAX_ROWS} rows): pass kind='ivf' (--type ivf) for an approximate index")
        index = faiss.IndexFlatIP(dim)
    else:
        nlist = default_nlist(rows) if nlist is None else nlist
        nprobe = min(nlist, DEFAULT_NPROBE) if nprobe is None else nprobe
        if not 1 <= nlist <= rows or not 1 <= nprobe <= nlist:
            raise ValueError(f"need 1 <= nlist <= {rows} (the row count) and 1 <= nprobe <= nlist, got nlist "
                             f"{nlist}, nprobe {nprobe}")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(_training_sample(directory, manifest, min(rows, TRAIN_POINTS_PER_LIST * nlist), seed))
        index.nprobe = nprobe
        info |= {"nlist": nlist, "nprobe": nprobe}
    start = 0
    for embeddings, _ in iter_shards(directory, manifest):
        _check_finite(embeddings, f"row {start} onwards of {directory}", start)
        index.add(_unit(embeddings))
        start += len(embeddings)
    data = faiss.serialize_index(index).tobytes()
    atomic_write(directory / INDEX_FILE, lambda f: f.write(data))
    info |= {"manifest_sha256": sha256_file(directory / MANIFEST), "index_sha256": hashlib.sha256(data).hexdigest(),
             "faiss": faiss.__version__}
    write_json(directory / INDEX_INFO, info)
    return info


def _check_finite(vectors: np.ndarray, what: str, first_row: int = 0) -> None:
    """Refuse vectors holding NaN or infinity (a flat index would store them and never return them)."""
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        rows = (np.flatnonzero(bad)[:5] + first_row).tolist()
        raise ValueError(f"{what}: {int(bad.sum())} vector(s) hold NaN or infinity (rows {rows}); re-embed those "
                         "images, or fix the vectors")


def _training_sample(directory: Path, manifest: dict, size: int, seed: int) -> np.ndarray:
    """``size`` rows drawn uniformly (seeded) from all shards, normalised, read shard by shard."""
    take = np.sort(np.random.default_rng(seed).choice(manifest["rows"], size=size, replace=False))
    parts, start = [], 0
    for embeddings, _ in iter_shards(directory, manifest):
        stop = start + len(embeddings)
        parts.append(_unit(embeddings[take[(take >= start) & (take < stop)] - start]))
        start = stop
    return np.concatenate(parts)


class NeighborIndex:
    """A built index with its rows' metadata (row, path, label) and the model that embedded them.

    ``search(vectors, k)`` and ``search_images(images, k)`` return, per query, up to ``k`` dicts
    ``{"row", "file_index", "path", "label", "similarity"}``, most similar first (``row`` indexes the
    collection's embeddings, ``file_index`` the input file list); ``predict`` votes on labels.
    """

    def __init__(self, directory: Path, index: Any, info: dict[str, Any], manifest: dict[str, Any],
                 metadata: pa.Table, encoder: Encoder | None = None) -> None:
        self.directory, self.index, self.info, self.manifest, self.metadata = directory, index, info, manifest, metadata
        self._encoder = encoder

    @classmethod
    def load(cls, directory: str | os.PathLike, *, nprobe: int | None = None,
             encoder: Encoder | None = None) -> NeighborIndex:
        """Open ``index.faiss`` in ``directory`` (an embed output indexed by ``build_index``);
        ``nprobe`` overrides the IVF default; ``encoder`` replaces the manifest's model for queries."""
        faiss = require("faiss")
        directory = Path(directory)
        manifest = read_manifest(directory)
        try:
            info = json.loads((directory / INDEX_INFO).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{directory / INDEX_INFO} not found: run `ssl-zoo index {directory}` "
                                    "first") from None
        except (ValueError, RecursionError):
            info = None
        if not isinstance(info, dict) or not info.get("index_sha256"):
            raise ValueError(f"{directory / INDEX_INFO} is not an index description this version wrote (no "
                             f"checksum of {INDEX_FILE}): run `ssl-zoo index {directory}` again")
        if info.get("manifest_sha256") != sha256_file(directory / MANIFEST):
            raise ValueError(f"the index in {directory} was built from another manifest (the embeddings changed): "
                             f"run `ssl-zoo index {directory}` again")
        data = (directory / INDEX_FILE).read_bytes()
        if hashlib.sha256(data).hexdigest() != info["index_sha256"]:  # checked before faiss reads a byte of it
            raise ValueError(f"{directory / INDEX_FILE} does not match the checksum in {INDEX_INFO}: it was changed "
                             f"or damaged; run `ssl-zoo index {directory}` again")
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        if nprobe is not None:
            if info["type"] != "ivf" or not 1 <= nprobe <= info["nlist"]:
                raise ValueError(f"nprobe applies to an IVF index, 1..nlist ({info.get('nlist')}); this index is "
                                 f"{info['type']}")
            index.nprobe = nprobe
        metadata = with_rows(require("pyarrow").concat_tables(
            [read_metadata(directory, manifest, s, ["file_index", "path", "label"]) for s in manifest["shards"]]))
        if index.ntotal != len(metadata):
            raise ValueError(f"{directory / INDEX_FILE} holds {index.ntotal} vectors, the shards {len(metadata)} rows: "
                             f"run `ssl-zoo index {directory}` again")
        return cls(directory, index, info, manifest, metadata, encoder)

    def __len__(self) -> int:
        return self.index.ntotal

    @cached_property
    def root(self) -> str:
        """The folder every row's file lies under (their common path): what paths are shown relative to."""
        paths = self.metadata["path"].to_pylist()
        return os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])

    def relative(self, path: str) -> str:
        """``path`` relative to the collection's ``root``."""
        return os.path.relpath(path, self.root)

    @cached_property
    def encoder(self) -> Encoder:
        """The model that embedded the collection: the one given to ``load``, else the manifest's (loaded on
        first use); refused when its weights' sha256 or feature dimension differ from the manifest's."""
        model, encoder = self.manifest["model"], self._encoder
        if encoder is None:
            if not model.get("spec"):
                raise ValueError(f"the manifest in {self.directory} names no loadable model (it was embedded with "
                                 "an in-memory Encoder): pass encoder= to NeighborIndex.load")
            from ..hub.sources import load

            encoder = load(model["spec"])
        self.check_model(encoder.info.get("sha256"), encoder.feature_dim, model.get("spec") or "given")
        return encoder

    def check_model(self, sha256: str | None, feature_dim: int, name: str) -> None:
        """Refuse a query model (its weights' sha256 when known, its output size) other than the one
        that embedded the collection."""
        model, dim = self.manifest["model"], self.manifest["feature_dim"]
        if (model.get("sha256") and sha256 and sha256 != model["sha256"]) or feature_dim != dim:
            raise ValueError(f"the query model ({name}: weights sha256 {sha256}, {feature_dim}-d) is not the one "
                             f"that embedded the collection in {self.directory} ({model.get('spec') or '?'}: "
                             f"{model.get('sha256')}, {dim}-d): use that model, or re-embed the collection with "
                             f"this one (`ssl-zoo embed SOURCE --model {name} --out DIR`, then `ssl-zoo index DIR`)")

    def embed(self, images: Any) -> np.ndarray:
        """Normalised float32 features of images (paths, bytes, PIL images, arrays) with the collection's model."""
        return self.encoder.embed(images, normalize=True).numpy()

    def search(self, vectors: np.ndarray | torch.Tensor, k: int = 10) -> list[list[dict[str, Any]]]:
        """The ``k`` most similar rows (cosine) for each query vector (one ``(D,)`` or many ``(N, D)``)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        queries = np.asarray(vectors.detach().cpu() if isinstance(vectors, torch.Tensor) else vectors)
        queries = queries[None] if queries.ndim == 1 else queries
        if queries.ndim != 2 or queries.shape[1] != self.index.d:
            raise ValueError(f"query vectors must be (N, {self.index.d}) or ({self.index.d},), got {queries.shape}: "
                             f"embed queries with the collection's model ({self.manifest['model'].get('spec')})")
        _check_finite(queries, "the query")
        if not (np.linalg.norm(queries.astype(np.float64), axis=1) > 0).all():
            raise ValueError("a query vector is all zeros: it has no direction to compare by cosine")
        similarities, ids = self.index.search(_unit(queries), k)
        found = ids >= 0  # an IVF search may return fewer than k
        hits = iter(self.metadata.take(ids[found]).to_pylist())
        return [[{**next(hits), "similarity": float(s)} for s, ok in zip(sims, oks) if ok]
                for sims, oks in zip(similarities, found)]

    def search_images(self, images: Any, k: int = 10) -> list[list[dict[str, Any]]]:
        """``search`` for images, embedded with the collection's model."""
        return self.search(self.embed(images), k)

    def predict(self, vectors: np.ndarray | torch.Tensor, k: int = 10) -> list[str | None]:
        """k-NN label of each query: the majority label of its ``k`` neighbours (ties: larger summed
        similarity); ``None`` when no neighbour has a label."""
        if not self.manifest.get("classes"):
            raise ValueError(f"the collection in {self.directory} has no labels (not an ImageFolder layout): "
                             "nothing to predict")
        return [vote(hits) for hits in self.search(vectors, k)]


def vote(hits: list[dict[str, Any]]) -> str | None:
    """The k-NN label of one query's hits: the majority label (ties: larger summed similarity); None if none has one."""
    votes: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for hit in hits:
        if hit["label"] is not None:
            votes[hit["label"]][0] += 1
            votes[hit["label"]][1] += hit["similarity"]
    return max(votes, key=lambda label: tuple(votes[label])) if votes else None
