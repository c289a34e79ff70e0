"""``ssl-zoo embed``: the mapper stage and the pipeline. Images listed and decoded by ``images`` (in
DataLoader workers) run through the model here and go to ``shards``, one shard in memory at a time.

Shard ``i`` holds files ``[i * shard_size, (i + 1) * shard_size)`` of the file list minus the ones that
failed, so a rerun, a resumed run and a torchrun run (shard ``i`` on rank ``i % world``) write the
same bytes. Row ``j`` of the concatenated embeddings is row ``j`` of the concatenated metadata; its
``file_index`` is its file's position in the input list (failed files have none).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..model import Encoder
from ..imagefile import ImageLimits
from . import BACKENDS, DEFAULT_SHARD_SIZE
from . import DTYPES as DTYPE_NAMES
from ..torchrun import join_process_group
from .images import DecodeDataset, ImageList, collate, die_with_parent, list_images
from .shards import FORMAT, PROGRESS, check_same_run, finished, write_manifest, write_shard

DTYPES = {name: np.dtype(name) for name in DTYPE_NAMES}
# Ranks wait for the slowest one at the final barrier; gloo's 30-minute default is too short for big shards.
BARRIER_TIMEOUT = timedelta(hours=24)


def _forward(encoder: Encoder, backend: str, device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``uint8 (N, S, S, 3) images -> float features`` with the model's own preprocessing, on ``backend``."""
    if backend in ("onnx", "onnx-int8"):
        from ..onnx import encoder_session
        from ..quantize import int8_session

        session = int8_session(encoder) if backend == "onnx-int8" else encoder_session(encoder)
        return lambda images: torch.from_numpy(session.run(None, {"images": encoder.preprocess(images).numpy()})[0])
    return lambda images: encoder(encoder.preprocess(images.to(device, non_blocking=True))).float()


def _provenance(encoder: Encoder) -> dict[str, Any]:
    """The model's identity, and ``spec``: a ``zoo.load`` spelling that gives back the same weights."""
    info = {k: encoder.info.get(k) for k in ("name", "source", "repo_id", "revision", "sha256")}
    if info["name"]:
        spec = info["name"]
    elif info["repo_id"]:
        spec = f"hf-hub:{info['repo_id']}@{info['revision']}"
    else:
        spec = info["source"] if str(info["source"] or "").startswith("local-dir:") else None
    return {"spec": spec, **info}


def embed_collection(source: str | os.PathLike, model: str | os.PathLike | Encoder, out: str | os.PathLike, *,
                     shard_size: int = DEFAULT_SHARD_SIZE, dtype: str = "float32", normalize: bool = False,
                     batch_size: int = 256, workers: int | None = None, backend: str = "torch",
                     device: str = "cpu", limits: ImageLimits = ImageLimits(), follow_symlinks: bool = True,
                     progress: bool | None = None) -> dict[str, Any] | None:
    """Embed every image of ``source`` (see ``list_images``) with ``model`` (an ``Encoder`` or a
    ``zoo.load`` source) into shards under ``out``; resume a killed run; under torchrun, split the
    shards over ranks. Returns the manifest (on rank 0; ``None`` on other ranks). Each file is decoded
    within ``limits`` (the server's, by default) or listed in ``failures.jsonl`` with its reason.

    ``progress``: ``None`` shows a tqdm bar on a terminal and a line per shard otherwise; ``False``: silent.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    for name, value, low in (("shard_size", shard_size, 1), ("batch_size", batch_size, 1),
                             ("workers", 0 if workers is None else workers, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if backend != "torch" and device != "cpu":
        raise ValueError(f"--backend {backend} runs on the CPU: drop --device or use --backend torch")
    images = list_images(source, follow_symlinks)
    rank, world, started = join_process_group(BARRIER_TIMEOUT)
    try:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        if not isinstance(model, Encoder):
            from ..hub.sources import load

            model = load(model, device=device)
        encoder = model
        encoder = encoder.to(device).eval()
        manifest = _manifest_head(encoder, source, images, shard_size, dtype, normalize, backend)
        out = Path(out)
        (out / PROGRESS).mkdir(parents=True, exist_ok=True)
        n_shards = -(-len(images.paths) // shard_size)
        check_same_run(out, manifest["settings_sha256"], n_shards)
        pending = [i for i in range(rank, n_shards, world) if not finished(out, i)]  # shard i on rank i % world
        if pending:
            _embed_shards(images, encoder, _forward(encoder, backend, device), out, pending, manifest,
                          device=device, batch_size=batch_size, workers=workers, limits=limits,
                          progress=progress, rank=rank, world=world, n_shards=n_shards)
        if world > 1:
            dist.barrier()
        return write_manifest(out, manifest, n_shards, list(images.skipped)) if rank == 0 else None
    finally:
        if started:
            dist.destroy_process_group()


def _manifest_head(encoder: Encoder, source: str | os.PathLike, images: ImageList, shard_size: int, dtype: str,
                   normalize: bool, backend: str) -> dict[str, Any]:
    """The manifest's fields known before any image is read; their sha256 identifies the run."""
    head = {"format": FORMAT, "model": _provenance(encoder), "encoder": encoder.config.to_dict(),
            "preprocessing": json.loads(json.dumps(encoder.pretrained_cfg)), "feature_dim": encoder.feature_dim,
            "dtype": dtype, "normalized": normalize, "backend": backend, "shard_size": shard_size,
            "source": {"spec": os.fspath(source), "kind": images.kind, "files": len(images.paths),
                       "files_sha256": images.digest()},
            "classes": list(images.classes) if images.classes else None}
    settings = {k: v for k, v in head.items() if k != "source"} | {"files_sha256": images.digest()}
    head["settings_sha256"] = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return head


def _embed_shards(images: ImageList, encoder: Encoder, forward: Callable[[torch.Tensor], torch.Tensor], out: Path,
                  pending: list[int], manifest: dict, *, device: str, batch_size: int, workers: int | None,
                  limits: ImageLimits, progress: bool | None, rank: int, world: int, n_shards: int) -> None:
    """Decode (DataLoader workers) and embed (this process) the ``pending`` shards, writing each when complete."""
    shard_size, n = manifest["shard_size"], len(images.paths)
    spans = [range(i * shard_size, min((i + 1) * shard_size, n)) for i in pending]
    batches = [list(span[j:j + batch_size]) for span in spans for j in range(0, len(span), batch_size)]
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    loader = DataLoader(DecodeDataset(images, encoder.config.input_size, limits), batch_sampler=batches,
                        num_workers=workers, collate_fn=collate, pin_memory=device.startswith("cuda"),
                        worker_init_fn=partial(die_with_parent, os.getpid()))
    total = sum(len(span) for span in spans)
    show_bar = sys.stderr.isatty() if progress is None else progress
    prefix = f"rank {rank}: " if world > 1 else ""
    bar = tqdm(total=total, unit="img", desc=f"{prefix}embed", disable=not show_bar,
               position=rank if world > 1 else None)
    dim, dtype, start, done = encoder.feature_dim, DTYPES[manifest["dtype"]], time.perf_counter(), 0
    shard, feats, failures, meta = None, [], [], {k: [] for k in ("file_index", "path", "label", "width", "height")}

    def flush() -> None:
        """Write the shard gathered so far, report it, and start the next one empty."""
        nonlocal feats, failures, meta
        write_shard(out, shard, manifest["settings_sha256"], feats, dim, dtype, meta, failures)
        if progress is None and not show_bar:  # not a terminal: a line per shard for the log
            rate = done / (time.perf_counter() - start)
            print(f"{prefix}shard {shard + 1}/{n_shards}: {len(meta['file_index'])} rows, {len(failures)} failed; "
                  f"{done}/{total} images, {rate:.0f} img/s, ETA {timedelta(seconds=round((total - done) / rate))}",
                  file=sys.stderr, flush=True)
        feats, failures, meta = [], [], {k: [] for k in meta}

    with torch.inference_mode(), bar:
        for batch in loader:
            if shard is not None and int(batch.rows[0]) // shard_size != shard:
                flush()
            shard = int(batch.rows[0]) // shard_size
            if len(batch.images):
                x = forward(torch.from_numpy(batch.images))
                if manifest["normalized"]:
                    x = F.normalize(x, dim=1)
                feats.append(x.cpu().numpy().astype(dtype, copy=False))
            for j, file_index in enumerate(batch.rows.tolist()):
                if not batch.ok[j]:
                    failures.append({"file_index": file_index, "path": images.paths[file_index],
                                     "reason": batch.reasons[j]})
                    continue
                meta["file_index"].append(file_index)
                meta["path"].append(images.paths[file_index])
                meta["label"].append(images.labels[file_index] if images.labels else None)
                meta["width"].append(batch.widths[j])
                meta["height"].append(batch.heights[j])
            bar.update(len(batch.rows))
            done += len(batch.rows)
        flush()


