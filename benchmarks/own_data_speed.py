"""Training on your own images, side by side with the CIFAR-10 path in one run.

    python benchmarks/own_data_speed.py

First pass: files decoded per second into the cache (``zoo.retrieval.arrays.decode_collection``, 2 DataLoader
workers), for the CIFAR-10 training JPEGs read as a plain folder and as webdataset shards, and for real
photographs (benchmarks/sample_photos.py) as a folder and as shards; beside it the ``webdataset`` package's own
streaming reader with the same decoding and workers (the reader the issue left to measurement). Cached: SimCLR
training views/s (width 16, bf16 where native) on the cached arrays of each source against the CIFAR-10 path's,
at 32 px and at 64 px. Every figure is the minimum over rounds; the sources alternate within each round.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

import sample_photos
from report import write_report
from training.config import build_config
from training.data import _resized
from training.hardware import memory_format, resolve_precision
from training.loop import build_method, train_step
from training.optim import build_optimizer
from training.views import ViewMaker
from zoo import load_cifar10
from zoo.data import cifar10_root
from zoo.imagefile import decode_bytes
from zoo.retrieval.arrays import decode_collection

ROUNDS, STEPS, WORKERS = 3, 6, 2


def decode_rate(source: str, size: int) -> float:
    """Files/s of one first pass of ``source`` into an empty cache."""
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        decoded = decode_collection(source, size, cache_dir=cache, workers=WORKERS, progress=False)
        return (len(decoded) + len(decoded.failures)) / (time.perf_counter() - start)


def webdataset_rate(pattern: str, size: int) -> float:
    """Files/s of the webdataset package's streaming reader, decoding each image as ``decode_collection`` does."""
    import webdataset as wds

    def decode(sample: dict) -> np.ndarray:
        key = next(k for k in sample if k in ("jpg", "png", "webp"))
        return decode_bytes(sample[key], size, name=sample["__key__"])[0]

    dataset = wds.WebDataset(pattern, shardshuffle=False, workersplitter=wds.split_by_worker).map(decode)
    start, n = time.perf_counter(), 0
    for batch in DataLoader(dataset, batch_size=256, num_workers=WORKERS, collate_fn=np.stack):
        n += len(batch)
    return n / (time.perf_counter() - start)


def views_per_s(images: np.ndarray, size: int, batch: int) -> float:
    """SimCLR training views/s on ``images`` (the cached uint8 arrays) at ``size`` px, after one warm-up step."""
    cfg = build_config("simclr", "cpu", None, {"image_size": size, "batch_size": batch})
    torch.manual_seed(0)
    method, _ = build_method(cfg)
    precision = resolve_precision("auto", torch.device("cpu"))
    fmt = memory_format(precision)
    method.to(memory_format=fmt)
    optimizer, make_views = build_optimizer(method, cfg), ViewMaker(cfg, fmt)
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16")
    data, generator = torch.from_numpy(images), torch.Generator().manual_seed(0)
    order = torch.randperm(len(data), generator=generator)

    def step(i: int) -> None:
        index = order[(i * batch) % (len(data) - batch):][:batch]
        train_step(method, method, optimizer, make_views(data[index], generator, 0), autocast, 0.0)

    step(0)
    start = time.perf_counter()
    for i in range(1, STEPS + 1):
        step(i)
    return STEPS * 2 * batch / (time.perf_counter() - start)


def main() -> None:
    root = cifar10_root(None)
    work = Path(tempfile.mkdtemp(prefix="own-data-speed-"))
    cifar_files = sorted((root / "train").rglob("*.jpg"))
    cifar_pattern = sample_photos.write_shards(cifar_files, work / "cifar-shards", per_shard=5000,
                                               labels=[p.parent.name for p in cifar_files])
    photos = sample_photos.make_photos(work / "photos", count=300)
    photo_pattern = sample_photos.write_shards(photos, work / "photo-shards")
    sources = {"CIFAR-10 train JPEGs, folder": (str(root / "train"), 32),
               "CIFAR-10 train JPEGs, webdataset shards": (cifar_pattern, 32),
               "photographs (300), folder": (str(work / "photos"), 64),
               "photographs (300), webdataset shards": (photo_pattern, 64)}
    first: dict[str, list[float]] = {name: [] for name in sources}
    streaming: dict[str, list[float]] = {name: [] for name in sources if "shards" in name}
    for _ in range(ROUNDS):
        for name, (source, size) in sources.items():
            first[name].append(decode_rate(source, size))
            if name in streaming:
                streaming[name].append(webdataset_rate(source, size))
    rows = [{"source": name, "size": f"{sources[name][1]} px", "first pass files/s (ours)": f"{min(r):,.0f}",
             "webdataset package files/s": f"{min(streaming[name]):,.0f}" if name in streaming else "-"}
            for name, r in first.items()]
    cached = {32: {"CIFAR-10 path": load_cifar10("train").images[:10_000],
                   "folder": decode_collection(str(root / "train"), 32, progress=False).images[:10_000],
                   "webdataset shards": decode_collection(cifar_pattern, 32, progress=False).images[:10_000]},
              64: {"CIFAR-10 path": _resized(load_cifar10("train").per_class(30), 64).images,
                   "folder": decode_collection(str(work / "photos"), 64, progress=False).images,
                   "webdataset shards": decode_collection(photo_pattern, 64, progress=False).images}}
    speed = {(size, name): [] for size, group in cached.items() for name in group}
    for _ in range(ROUNDS):
        for size, group in cached.items():
            for name, images in group.items():
                speed[size, name].append(views_per_s(images, size, 256 if size == 32 else 128))
    cached_rows = []
    for size, group in cached.items():
        base = speed[size, "CIFAR-10 path"]
        for name in group:
            ratios = [a / b for a, b in zip(speed[size, name], base)]
            cached_rows.append({"size": f"{size} px", "source": name, "views/s (min of rounds)": f"{min(speed[size, name]):,.0f}",
                                "of the CIFAR-10 path's (min ratio)": f"{100 * min(ratios):.0f} %"})
    notes = (f"{ROUNDS} rounds, sources alternating; first pass into an empty cache with {WORKERS} DataLoader workers "
             f"(decoding as the server does: limits, formats, EXIF, short side resized, centre crop); cached: "
             f"{STEPS} SimCLR steps (width 16, batch 256 at 32 px, 128 at 64 px) per source and round.")
    print(write_report("own_data_first_pass", "Own images: the first pass (decode and cache)", rows, notes))
    print(write_report("own_data_cached", "Own images: training speed once cached", cached_rows, notes))


if __name__ == "__main__":
    main()
