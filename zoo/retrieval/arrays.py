"""A collection (a folder, a text file of paths, webdataset shards) decoded once into one cached uint8 array at
one square size: what ``ssl-zoo train --data`` reads. Each file is decoded as the server decodes an upload
(``images.DecodeDataset``: the same limits, formats and EXIF handling, short side resized, centre crop), in
DataLoader workers; a file that cannot be used is recorded with its reason, never fatal. The cache is keyed by
the source and the size, and rebuilt when a file changes or the cache is corrupt.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import DatasetError, default_cache_dir, read_array_cache, stat_digest, write_array_cache
from ..imagefile import ImageLimits
from .images import DecodeDataset, ImageList, collate, die_with_parent, list_images

CACHE_FORMAT = 1
DECODE_BATCH = 256


@dataclass(frozen=True)
class DecodedImages:
    """A collection's usable images as uint8 ``(N, S, S, 3)``, their labels when the layout gives them, and
    the data set's identity without paths (``source``: kind, image count, files listed, sha256 of the sorted
    relative file names)."""

    images: np.ndarray
    labels: np.ndarray | None
    classes: tuple[str, ...] | None
    files: list[str]  # the images' names relative to the collection's folder, in array order
    failures: list[dict[str, str]]  # {"path", "reason"} of every file that could not be used
    source: dict[str, Any]
    decode_seconds: float | None = None  # the first pass's time; None when read from the cache

    def __len__(self) -> int:
        return len(self.images)


def decode_collection(source: str | os.PathLike, size: int, *, cache_dir: str | os.PathLike | None = None,
                      limits: ImageLimits = ImageLimits(), workers: int | None = None,
                      progress: bool | None = None) -> DecodedImages:
    """Every image of ``source`` (``images.list_images``: folder, list of paths, ``shards/{0000..0009}.tar``)
    as RGB uint8 ``(size, size)``, decoded once and then read from the cache. ``progress``: ``None`` shows a
    bar on a terminal and one summary line otherwise; ``False``: silent."""
    listed = list_images(source)
    root = _root(listed.paths)
    fingerprint = {"format": CACHE_FORMAT, "size": size, "limits": asdict(limits), "list": listed.digest(),
                   "stat": stat_digest(listed.members.shards if listed.members is not None else listed.paths)}
    key = hashlib.sha256(f"{os.path.abspath(os.fspath(source))}|{size}".encode()).hexdigest()[:16]
    cache = Path(cache_dir or default_cache_dir()) / "arrays" / f"{Path(root).name or 'root'}-{key}"
    cached = read_array_cache(cache, fingerprint, ("images", "ok"))
    if cached is not None:
        arrays, meta = cached
        return _result(listed, arrays["images"], arrays["ok"], meta["failures"], None)
    start = time.perf_counter()
    images, ok, failures = _decode(listed, size, limits, workers, progress)
    seconds = time.perf_counter() - start
    if not ok.any():
        raise DatasetError(f"none of the {len(ok)} files of {source} could be used as an image (first: "
                           f"{failures[0]['path']}: {failures[0]['reason']})")
    write_array_cache(cache, fingerprint, {"images": images, "ok": ok}, {"failures": failures})
    if progress is not False:
        print(f"decoded {int(ok.sum()):,} images of {source} at {size}x{size} in {seconds:.1f} s "
              f"({len(ok) / seconds:,.0f} files/s), {len(failures)} unusable; cached in {cache}", file=sys.stderr,
              flush=True)
    return _result(listed, images, ok, failures, seconds)


def _root(paths: list[str]) -> str:
    """The folder every path lies under: what the identity and the records name files relative to."""
    return os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])


def _decode(listed: ImageList, size: int, limits: ImageLimits, workers: int | None,
            progress: bool | None) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    """Decode every listed file in DataLoader workers: the images (failed rows dropped), the mask of decoded
    files, and each failure with its reason."""
    n = len(listed.paths)
    images = np.zeros((n, size, size, 3), np.uint8)
    ok = np.zeros(n, bool)
    failures = list(listed.skipped)
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    loader = DataLoader(DecodeDataset(listed, size, limits), batch_size=DECODE_BATCH, num_workers=workers,
                        collate_fn=collate, worker_init_fn=partial(die_with_parent, os.getpid()))
    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(total=n, unit="img", desc="decoding images", disable=not show, leave=False) as bar:
        for batch in loader:
            rows = batch.rows[batch.ok]
            if len(rows):  # a batch in which nothing decoded has no images to place
                images[rows], ok[rows] = batch.images, True
            failures += [{"path": listed.paths[r], "reason": reason}
                         for r, good, reason in zip(batch.rows.tolist(), batch.ok, batch.reasons) if not good]
            bar.update(len(batch.rows))
    return (images if ok.all() else images[ok]), ok, failures


def _result(listed: ImageList, images: np.ndarray, ok: np.ndarray, failures: list[dict[str, str]],
            seconds: float | None) -> DecodedImages:
    used = [p for p, good in zip(listed.paths, ok) if good]
    root = _root(used)  # the unusable files do not move it: the same images are the same data set
    files = [os.path.relpath(p, root) for p in used]
    labels, classes = None, None
    if listed.labels is not None:
        kept = [label for label, good in zip(listed.labels, ok) if good]
        classes = tuple(sorted(set(kept)))
        labels = np.searchsorted(np.asarray(classes), np.asarray(kept)).astype(np.int64)
    identity = {"kind": listed.kind, "images": len(files), "listed": len(listed.paths),
                "sha256": hashlib.sha256(json.dumps(sorted(files)).encode()).hexdigest(),
                "pixels_sha256": hashlib.sha256(memoryview(np.ascontiguousarray(images))).hexdigest(),
                "classes": len(classes) if classes else None}
    relative = [{"path": os.path.relpath(f["path"], root) if f["path"].startswith(root + os.sep) else f["path"],
                 "reason": f["reason"]} for f in failures]
    return DecodedImages(images, labels, classes, files, relative, identity, seconds)
