"""Embed an image collection to disk in clip-retrieval's layout: ``ssl-zoo embed``.

``DIR`` after a run::

    embeddings-00000.npy        float32 or float16 (rows, feature_dim); L2-normalised rows with --normalize
    metadata-00000.parquet      row (the file's position in the sorted file list), path, label, width, height
    failures.jsonl              one {"row", "path", "reason"} per file that could not be read
    manifest.json               model provenance, preprocessing, dtype, shard list with rows and sha256
    .progress/shard-00000.json  a finished shard's record (its files' sha256, its failures); resume reads it

Shard ``i`` holds files ``[i * shard_size, (i + 1) * shard_size)`` of the file list minus the ones that
failed, so a rerun, a resumed run and a torchrun run (shard ``i`` on rank ``i % world``) write the
same bytes. Row ``j`` of the concatenated embeddings is row ``j`` of the concatenated metadata.
Images are decoded in DataLoader workers while the model runs; only one shard is held in memory.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from tqdm.auto import tqdm

from . import __version__
from .data import CIFAR10_CLASSES, CIFAR10_COUNTS, DatasetError, cifar10_root
from .io import atomic_write, sha256_file, write_bytes, write_json
from .model import Encoder
from .transforms import image_to_array

if TYPE_CHECKING:
    import pyarrow as pa

FORMAT = "ssl-zoo-embeddings/1"
DEFAULT_SHARD_SIZE = 10_000
DTYPES = {"float32": np.float32, "float16": np.float16}
BACKENDS = ("torch", "onnx")
SPLIT_PREFIX = "cifar10:"
MANIFEST, FAILURES, PROGRESS = "manifest.json", "failures.jsonl", ".progress"
# Ranks wait for the slowest one at the final barrier; gloo's 30-minute default is too short for big shards.
BARRIER_TIMEOUT = timedelta(hours=24)


def require(module: str) -> ModuleType:
    """Import a module of the ``index`` extra (pyarrow, faiss) on first use, so that ``ssl-zoo`` starts without it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise RuntimeError(f"this needs {module.split('.')[0]}, which is not installed: pip install "
                           "'ssl-zoo[index]'") from e


@dataclass(frozen=True)
class ImageList:
    """A collection's files in their fixed order, with labels when the layout gives them."""

    paths: list[str]
    labels: list[str] | None = None
    kind: str = "list"
    classes: tuple[str, ...] | None = None

    def digest(self) -> str:
        """sha256 of the ordered paths and labels: what a resumed run must find unchanged."""
        h = hashlib.sha256()
        for i, path in enumerate(self.paths):
            h.update(f"{path}\t{self.labels[i] if self.labels else ''}\n".encode())
        return h.hexdigest()


def list_images(source: str | os.PathLike) -> ImageList:
    """The files of ``source``: a folder of images (recursive, sorted; labelled by first-level
    sub-folder when every image has one, as in an ImageFolder), a text file of paths (one per line,
    relative ones taken from the list's folder; kept in the list's order) or ``cifar10:train|test``."""
    text = os.fspath(source)
    if text.startswith(SPLIT_PREFIX):
        return _cifar10_split(text[len(SPLIT_PREFIX):])
    path = Path(text).expanduser()
    if path.is_dir():
        return _folder(path)
    if path.is_file():
        return _text_list(path)
    raise FileNotFoundError(f"SOURCE {text!r} not found: give a folder of images, a text file of image paths "
                            f"(one per line) or a built-in split ({SPLIT_PREFIX}train, {SPLIT_PREFIX}test)")


def _folder(root: Path, kind: str = "folder") -> ImageList:
    root = Path(os.path.abspath(root))
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        parts = Path(dirpath).relative_to(root).parts
        found += [(*parts, f) for f in filenames if not f.startswith(".") and f.lower().endswith(IMG_EXTENSIONS)]
    if not found:
        raise DatasetError(f"no image files ({', '.join(IMG_EXTENSIONS)}) under {root}")
    found.sort()  # by path components, so images sort by class first, as in ImageFolder
    paths = [str(root.joinpath(*parts)) for parts in found]
    if not all(len(parts) > 1 for parts in found):
        return ImageList(paths, kind=kind)
    labels = [parts[0] for parts in found]
    return ImageList(paths, labels, kind, tuple(sorted(set(labels))))


def _text_list(path: Path) -> ImageList:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"SOURCE {path} is not a text file of paths (one per line): give a folder of images, "
                         f"a text file of paths or {SPLIT_PREFIX}train / {SPLIT_PREFIX}test") from None
    base = path.parent
    paths = [os.path.abspath(base / Path(line.strip()).expanduser()) for line in lines if line.strip()]
    if not paths:
        raise ValueError(f"{path} lists no image paths (one per line expected)")
    return ImageList(paths)


def _cifar10_split(split: str) -> ImageList:
    if split not in CIFAR10_COUNTS:
        raise ValueError(f"unknown built-in split {SPLIT_PREFIX}{split}; use {SPLIT_PREFIX}train or {SPLIT_PREFIX}test")
    root = cifar10_root(None)
    if root is None or not (root / split).is_dir():
        raise DatasetError(f"{SPLIT_PREFIX}{split} reads CIFAR-10 JPEGs laid out as <root>/{split}/<class>/*.jpg, "
                           "none found: point $SSL_ZOO_DATA at such a root, or give the folder itself as SOURCE")
    images = _folder(root / split, kind=f"{SPLIT_PREFIX}{split}")
    if images.classes != CIFAR10_CLASSES or len(images.paths) != CIFAR10_COUNTS[split]:
        raise DatasetError(f"{root / split} holds {len(images.paths)} images in classes {images.classes}, not the "
                           f"{CIFAR10_COUNTS[split]} CIFAR-10 {split} images: repair the copy or use another root")
    return images


class _DecodeDataset(Dataset):
    """Item ``i`` -> ``(i, uint8 (S, S, 3) image or None, width, height, failure reason or None)``.

    Paths live in one pyarrow array: DataLoader workers forked from this process would otherwise
    copy a list of Python strings page by page as they touch its refcounts (pytorch#13246).
    """

    def __init__(self, paths: list[str], size: int, max_pixels: int) -> None:
        pa = require("pyarrow")
        self.paths = pa.array(paths, pa.string())
        self.size, self.max_pixels = size, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, int, int, str | None]:
        path = self.paths[i].as_py()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # max_pixels decides below
                with Image.open(path) as im:
                    width, height = im.size
                    if width * height > self.max_pixels:
                        return i, None, width, height, (f"too large: {width} x {height} pixels, over the "
                                                        f"--max-pixels limit of {self.max_pixels}")
                    return i, image_to_array(im, self.size), width, height, None
        except Exception as e:  # any decoder error (OSError, SyntaxError, ...) fails the file, not the run
            return i, None, 0, 0, f"{type(e).__name__}: {e}"


def _die_with_parent(parent: int, worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: have Linux kill the worker when the embedding process dies. A
    SIGKILLed parent otherwise leaves its workers blocked forever on a full result pipe."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


@dataclass
class _Batch:
    rows: np.ndarray          # file positions of every item
    images: np.ndarray        # uint8 (m, S, S, 3) of the decoded ones
    ok: np.ndarray            # bool mask of decoded items
    widths: list[int]
    heights: list[int]
    reasons: list[str | None]


def _collate(items: list[tuple]) -> _Batch:
    rows, arrays, widths, heights, reasons = zip(*items)
    good = [a for a in arrays if a is not None]
    size = next((a.shape[0] for a in good), 0)
    images = np.stack(good) if good else np.zeros((0, size, size, 3), np.uint8)
    return _Batch(np.asarray(rows, np.int64), images, np.array([a is not None for a in arrays]), list(widths),
                  list(heights), list(reasons))


def onnx_forward(encoder: Encoder, threads: int | None = None, tolerance: float = 1e-3) -> Callable[[torch.Tensor],
                                                                                                    torch.Tensor]:
    """A CPU onnxruntime function ``preprocessed batch -> features`` for ``encoder``: exported with
    ``torch.onnx.export(dynamo=True)`` (dynamic batch, opset 18) and checked against torch."""
    import onnxruntime as ort

    size = encoder.config.input_size
    model = encoder.cpu().eval()
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory(prefix="ssl-zoo-onnx-") as tmp:
        path = os.path.join(tmp, "encoder.onnx")
        torch.onnx.export(model, (example,), path, dynamo=True, opset_version=18, input_names=["images"],
                          output_names=["features"], dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                          verbose=False)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"images": x.cpu().numpy()})[0])

    with torch.inference_mode():
        diff = (forward(example) - model(example)).abs().max().item()
    if diff > tolerance:
        raise RuntimeError(f"the ONNX export of this encoder differs from torch by {diff:.2e} (> {tolerance}); "
                           "use --backend torch")
    return forward


def _forward(encoder: Encoder, backend: str, device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``uint8 (N, S, S, 3) images -> float features`` with the model's own preprocessing, on ``backend``."""
    if backend == "onnx":
        run = onnx_forward(encoder)
        return lambda images: run(encoder.preprocess(images))
    return lambda images: encoder(encoder.preprocess(images.to(device, non_blocking=True))).float()


def _world() -> tuple[int, int, bool]:
    """(rank, world size, whether this call started the process group), from torchrun's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, False
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    return dist.get_rank(), dist.get_world_size(), started


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


def _shard_name(kind: str, shard: int) -> str:
    return f"embeddings-{shard:05d}.npy" if kind == "embeddings" else f"metadata-{shard:05d}.parquet"


def _record_path(out: Path, shard: int) -> Path:
    return out / PROGRESS / f"shard-{shard:05d}.json"


def _read_record(out: Path, shard: int) -> dict | None:
    try:
        return json.loads(_record_path(out, shard).read_text())
    except (OSError, ValueError):
        return None  # absent, or cut short by a crash: the shard is redone


def _verified(out: Path, record: dict) -> bool:
    """Both files of a finished shard are present with the sha256 its record holds."""
    try:
        return all(sha256_file(out / record[k]["file"]) == record[k]["sha256"] for k in ("embeddings", "metadata"))
    except (OSError, KeyError, TypeError):
        return False


def _finished(out: Path, shard: int) -> bool:
    """A shard whose record exists and whose files still have the recorded sha256 (else it is redone)."""
    record = _read_record(out, shard)
    return record is not None and _verified(out, record)


def _check_same_run(out: Path, settings_sha: str, n_shards: int) -> None:
    """Refuse to mix shards of another run (other model, settings or files) into ``out``."""
    try:
        found = [json.loads((out / MANIFEST).read_text())]
    except (OSError, ValueError):
        found = []  # none yet (an unreadable one is rewritten at the end)
    found += [r for r in (_read_record(out, i) for i in range(n_shards)) if r is not None]
    for record in found:
        if record.get("settings_sha256") != settings_sha:
            raise ValueError(f"{out} holds the output of another embed run (different model, settings or file list): "
                             "give another --out, or delete that folder to start over")


def _remove_stale_temps(out: Path, names: list[str]) -> None:
    """Delete temp files a killed ``atomic_write`` of these names left behind (only their owner rank calls this)."""
    for name in names:
        for tmp in Path(out / name).parent.glob(f".{Path(name).name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def _write_shard(out: Path, shard: int, settings_sha: str, feats: list[np.ndarray], dim: int, dtype: np.dtype,
                 meta: dict[str, list], failures: list[dict]) -> dict:
    """Write a shard's embeddings and metadata, then its record (the commit point), each atomically."""
    names = {k: _shard_name(k, shard) for k in ("embeddings", "metadata")}
    _remove_stale_temps(out, [*names.values(), f"{PROGRESS}/{_record_path(out, shard).name}"])
    embeddings = np.concatenate(feats) if feats else np.zeros((0, dim), dtype)
    atomic_write(out / names["embeddings"], lambda f: np.save(f, embeddings))
    pa, pq = require("pyarrow"), require("pyarrow.parquet")
    table = pa.table({"row": pa.array(meta["row"], pa.int64()), "path": pa.array(meta["path"], pa.string()),
                      "label": pa.array(meta["label"], pa.string()), "width": pa.array(meta["width"], pa.int32()),
                      "height": pa.array(meta["height"], pa.int32())})
    atomic_write(out / names["metadata"], lambda f: pq.write_table(table, f))
    record = {"shard": shard, "settings_sha256": settings_sha, "rows": len(embeddings), "failures": failures,
              **{k: {"file": n, "sha256": sha256_file(out / n)} for k, n in names.items()}}
    write_json(_record_path(out, shard), record)
    return record


def embed_collection(source: str | os.PathLike, model: str | os.PathLike | Encoder, out: str | os.PathLike, *,
                     shard_size: int = DEFAULT_SHARD_SIZE, dtype: str = "float32", normalize: bool = False,
                     batch_size: int = 256, workers: int | None = None, backend: str = "torch",
                     device: str = "cpu", max_pixels: int = Image.MAX_IMAGE_PIXELS,
                     progress: bool | None = None) -> dict[str, Any] | None:
    """Embed every image of ``source`` (see ``list_images``) with ``model`` (an ``Encoder`` or a
    ``zoo.load`` source) into shards under ``out``; resume a killed run; under torchrun, split the
    shards over ranks. Returns the manifest (on rank 0; ``None`` on other ranks).

    ``progress``: ``None`` shows a tqdm bar on a terminal and a line per shard otherwise; ``False``: silent.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    for name, value, low in (("shard_size", shard_size, 1), ("batch_size", batch_size, 1),
                             ("max_pixels", max_pixels, 1), ("workers", 0 if workers is None else workers, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if backend == "onnx" and device != "cpu":
        raise ValueError("--backend onnx runs on the CPU: drop --device or use --backend torch")
    images = list_images(source)
    rank, world, started = _world()
    try:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        encoder = model if isinstance(model, Encoder) else Encoder.from_pretrained(model, device=device)
        encoder = encoder.to(device).eval()
        manifest = _manifest_head(encoder, source, images, shard_size, dtype, normalize, backend)
        out = Path(out)
        (out / PROGRESS).mkdir(parents=True, exist_ok=True)
        n_shards = -(-len(images.paths) // shard_size)
        _check_same_run(out, manifest["settings_sha256"], n_shards)
        pending = [i for i in range(rank, n_shards, world) if not _finished(out, i)]  # shard i on rank i % world
        if pending:
            _embed_shards(images, encoder, _forward(encoder, backend, device), out, pending, manifest,
                          device=device, batch_size=batch_size, workers=workers, max_pixels=max_pixels,
                          progress=progress, rank=rank, world=world, n_shards=n_shards)
        if world > 1:
            dist.barrier()
        return _finish(out, manifest, n_shards) if rank == 0 else None
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
                  max_pixels: int, progress: bool | None, rank: int, world: int, n_shards: int) -> None:
    """Decode (DataLoader workers) and embed (this process) the ``pending`` shards, writing each when complete."""
    shard_size, n = manifest["shard_size"], len(images.paths)
    spans = [range(i * shard_size, min((i + 1) * shard_size, n)) for i in pending]
    batches = [list(span[j:j + batch_size]) for span in spans for j in range(0, len(span), batch_size)]
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    loader = DataLoader(_DecodeDataset(images.paths, encoder.config.input_size, max_pixels), batch_sampler=batches,
                        num_workers=workers, collate_fn=_collate, pin_memory=device.startswith("cuda"),
                        worker_init_fn=partial(_die_with_parent, os.getpid()))
    total = sum(len(span) for span in spans)
    show_bar = sys.stderr.isatty() if progress is None else progress
    prefix = f"rank {rank}: " if world > 1 else ""
    bar = tqdm(total=total, unit="img", desc=f"{prefix}embed", disable=not show_bar,
               position=rank if world > 1 else None)
    dim, dtype, start, done = encoder.feature_dim, DTYPES[manifest["dtype"]], time.perf_counter(), 0
    shard, feats, failures, meta = None, [], [], {k: [] for k in ("row", "path", "label", "width", "height")}

    def flush() -> None:
        """Write the shard gathered so far, report it, and start the next one empty."""
        nonlocal feats, failures, meta
        _write_shard(out, shard, manifest["settings_sha256"], feats, dim, dtype, meta, failures)
        if progress is None and not show_bar:  # not a terminal: a line per shard for the log
            rate = done / (time.perf_counter() - start)
            print(f"{prefix}shard {shard + 1}/{n_shards}: {len(meta['row'])} rows, {len(failures)} failed; "
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
            for j, row in enumerate(batch.rows.tolist()):
                if not batch.ok[j]:
                    failures.append({"row": row, "path": images.paths[row], "reason": batch.reasons[j]})
                    continue
                meta["row"].append(row)
                meta["path"].append(images.paths[row])
                meta["label"].append(images.labels[row] if images.labels else None)
                meta["width"].append(batch.widths[j])
                meta["height"].append(batch.heights[j])
            bar.update(len(batch.rows))
            done += len(batch.rows)
        flush()


def _finish(out: Path, manifest: dict, n_shards: int) -> dict[str, Any]:
    """Rank 0, after every rank is done: write ``failures.jsonl`` and ``manifest.json`` from the records."""
    records = [_read_record(out, i) for i in range(n_shards)]
    if missing := [i for i, r in enumerate(records) if r is None or not _verified(out, r)]:
        raise RuntimeError(f"shards {missing[:10]} of {out} are missing or corrupt after the run; run it again to "
                           "redo them")
    failures = [f for r in records for f in r["failures"]]
    write_bytes(out / FAILURES, "".join(json.dumps(f) + "\n" for f in failures).encode())
    manifest = {**manifest, "rows": sum(r["rows"] for r in records), "failures": len(failures),
                "shards": [{"index": r["shard"], "rows": r["rows"], "failures": len(r["failures"]),
                            "embeddings": r["embeddings"], "metadata": r["metadata"]} for r in records],
                "created_with": {"ssl_zoo": __version__, "torch": torch.__version__}}
    write_json(out / MANIFEST, manifest)
    return manifest


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``manifest.json`` of a finished ``ssl-zoo embed`` output."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {directory} is not a finished `ssl-zoo embed` output (run or "
                                "resume `ssl-zoo embed ... --out` to complete it)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def iter_shards(directory: str | os.PathLike, manifest: dict[str, Any] | None = None, *,
                verify: bool = True) -> Iterator[tuple[np.ndarray, pa.Table]]:
    """Yield each shard's ``(embeddings, metadata table)`` in order, checking its files' sha256."""
    directory, pq = Path(directory), require("pyarrow.parquet")
    manifest = manifest or read_manifest(directory)
    for shard in manifest["shards"]:
        files = {k: directory / shard[k]["file"] for k in ("embeddings", "metadata")}
        if verify and not _verified(directory, shard):
            raise ValueError(f"shard {shard['index']} of {directory} ({files['embeddings'].name}, "
                             f"{files['metadata'].name}) does not match the manifest's sha256: rerun `ssl-zoo embed` "
                             "with the same arguments to redo it")
        yield np.load(files["embeddings"]), pq.read_table(files["metadata"])


def load_collection(directory: str | os.PathLike, *, verify: bool = True) -> tuple[np.ndarray, pa.Table]:
    """All embeddings ``(rows, feature_dim)`` and the metadata table of an ``ssl-zoo embed`` output."""
    manifest = read_manifest(directory)
    shards = list(iter_shards(directory, manifest, verify=verify))
    embeddings = np.concatenate([e for e, _ in shards]) if shards else np.zeros((0, manifest["feature_dim"]))
    return embeddings, require("pyarrow").concat_tables([t for _, t in shards])


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``ssl-zoo embed``'s arguments (also ``python -m zoo.collection``'s)."""
    p.add_argument("source", help=f"a folder of images (recursive; ImageFolder sub-folders give labels), a text file "
                   f"of image paths (one per line) or {SPLIT_PREFIX}train / {SPLIT_PREFIX}test")
    p.add_argument("--model", required=True, help="registry name, hf-hub:owner/repo[@rev] or a model folder")
    p.add_argument("--out", required=True, help="output folder (rerun the same command to resume a killed run)")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="images per shard (default %(default)s)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--normalize", action="store_true", help="L2-normalise every row")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, help="DataLoader decoding processes (default: min(4, CPUs))")
    p.add_argument("--backend", choices=BACKENDS, default="torch", help="onnx: ONNX Runtime on the CPU")
    p.add_argument("--device", default="cpu", help="cpu, cuda (under torchrun: cuda:LOCAL_RANK) or auto")
    p.add_argument("--max-pixels", type=int, default=Image.MAX_IMAGE_PIXELS,
                   help="skip (and list in failures.jsonl) images with more pixels (default %(default)s)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> None:
    manifest = embed_collection(args.source, args.model, args.out, shard_size=args.shard_size, dtype=args.dtype,
                                normalize=args.normalize, batch_size=args.batch_size, workers=args.workers,
                                backend=args.backend, device=args.device, max_pixels=args.max_pixels)
    if manifest is not None:
        print(f"{manifest['rows']} rows x {manifest['feature_dim']} ({manifest['dtype']}) in "
              f"{len(manifest['shards'])} shards, {manifest['failures']} failed files -> {args.out}")


def main(argv: list[str] | None = None) -> int:
    """``python -m zoo.collection`` (what torchrun runs): ``ssl-zoo embed`` without the other commands."""
    parser = argparse.ArgumentParser(prog="python -m zoo.collection", description="ssl-zoo embed")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, RuntimeError, OSError, LookupError) as e:
        print(f"ssl-zoo embed: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
