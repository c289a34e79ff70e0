"""The writer stage of ``ssl-zoo embed``, and the reading back: shards of ``.npy`` embeddings and parquet
metadata, each committed by a record with its files' sha256, and the manifest that lists them.

``DIR`` after a run::

    embeddings-00000.npy        float32 or float16 (rows, feature_dim); L2-normalised rows with --normalize
    metadata-00000.parquet      file_index (the file's position in the input list), path, label, width, height
    failures.jsonl              one {"file_index", "path", "reason"} per file that could not be read
    manifest.json               model provenance, preprocessing, dtype, shard list with rows and sha256
    .progress/shard-00000.json  a finished shard's record (its files' sha256, its failures); resume reads it
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import __version__
from ..io import atomic_write, remove_stale_temps, sha256_file, write_json, write_jsonl
from . import require

if TYPE_CHECKING:
    import pyarrow as pa

FORMAT = "ssl-zoo-embeddings/2"
FORMAT_1 = "ssl-zoo-embeddings/1"  # read too: its metadata column "row" held what is now "file_index"
MANIFEST, FAILURES, PROGRESS = "manifest.json", "failures.jsonl", ".progress"


def shard_name(kind: str, shard: int) -> str:
    return f"embeddings-{shard:05d}.npy" if kind == "embeddings" else f"metadata-{shard:05d}.parquet"


def _record_path(out: Path, shard: int) -> Path:
    return out / PROGRESS / f"shard-{shard:05d}.json"


def _read_record(out: Path, shard: int) -> dict | None:
    try:
        record = json.loads(_record_path(out, shard).read_text())
    except (OSError, ValueError, RecursionError):
        return None  # absent, or cut short by a crash: the shard is redone
    return record if isinstance(record, dict) else None  # not a record: redone too


def _verified(out: Path, record: dict) -> bool:
    """Both files of a finished shard are present with the sha256 its record holds."""
    try:
        return all(sha256_file(out / record[k]["file"]) == record[k]["sha256"] for k in ("embeddings", "metadata"))
    except (OSError, KeyError, TypeError):
        return False


def finished(out: Path, shard: int) -> bool:
    """A shard whose record exists and whose files still have the recorded sha256 (else it is redone)."""
    record = _read_record(out, shard)
    return record is not None and _verified(out, record)


def check_same_run(out: Path, settings_sha: str, n_shards: int) -> None:
    """Refuse to mix shards of another run (other model, settings or files) into ``out``."""
    try:
        found = [json.loads((out / MANIFEST).read_text())]
    except (OSError, ValueError, RecursionError):
        found = []  # none yet (an unreadable one is rewritten at the end)
    found = [m for m in found if isinstance(m, dict)]  # not a manifest: rewritten at the end too
    found += [r for r in (_read_record(out, i) for i in range(n_shards)) if r is not None]
    for record in found:
        if record.get("settings_sha256") != settings_sha:
            raise ValueError(f"{out} holds the output of another embed run (different model, settings or file list): "
                             "give another --out, or delete that folder to start over")


def write_shard(out: Path, shard: int, settings_sha: str, feats: list[np.ndarray], dim: int, dtype: np.dtype,
                 meta: dict[str, list], failures: list[dict]) -> dict:
    """Write a shard's embeddings and metadata, then its record (the commit point), each atomically."""
    names = {k: shard_name(k, shard) for k in ("embeddings", "metadata")}
    for name in [*names.values(), f"{PROGRESS}/{_record_path(out, shard).name}"]:  # only this shard's rank does
        remove_stale_temps(out / name)
    embeddings = np.concatenate(feats) if feats else np.zeros((0, dim), dtype)
    atomic_write(out / names["embeddings"], lambda f: np.save(f, embeddings))
    pa, pq = require("pyarrow"), require("pyarrow.parquet")
    table = pa.table({"file_index": pa.array(meta["file_index"], pa.int64()), "path": pa.array(meta["path"], pa.string()),
                      "label": pa.array(meta["label"], pa.string()), "width": pa.array(meta["width"], pa.int32()),
                      "height": pa.array(meta["height"], pa.int32())})
    atomic_write(out / names["metadata"], lambda f: pq.write_table(table, f))
    record = {"shard": shard, "settings_sha256": settings_sha, "rows": len(embeddings), "failures": failures,
              **{k: {"file": n, "sha256": sha256_file(out / n)} for k, n in names.items()}}
    write_json(_record_path(out, shard), record)
    return record


def write_manifest(out: Path, manifest: dict, n_shards: int, skipped: list[dict] = ()) -> dict[str, Any]:
    """Rank 0, after every rank is done: write ``failures.jsonl`` (the files left out of the list, then
    each shard's failures) and ``manifest.json`` from the records."""
    records = [_read_record(out, i) for i in range(n_shards)]
    if missing := [i for i, r in enumerate(records) if r is None or not _verified(out, r)]:
        raise RuntimeError(f"shards {missing[:10]} of {out} are missing or corrupt after the run; run it again to "
                           "redo them")
    failures = [{"file_index": None, **s} for s in skipped] + [f for r in records for f in r["failures"]]
    write_jsonl(out / FAILURES, failures)
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
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path} is not valid JSON ({type(e).__name__}): rerun `ssl-zoo embed` with the same "
                         "arguments to write it again") from None
    if not isinstance(manifest, dict) or manifest.get("format") not in (FORMAT, FORMAT_1):
        raise ValueError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def read_metadata(directory: Path, manifest: dict[str, Any], shard: dict[str, Any],
                  columns: list[str] | None = None) -> pa.Table:
    """One shard's metadata table (``columns``: a subset), ``file_index`` named so in either format."""
    pq = require("pyarrow.parquet")
    old = manifest["format"] == FORMAT_1
    wanted = None if columns is None else [("row" if old and c == "file_index" else c) for c in columns]
    table = pq.read_table(directory / shard["metadata"]["file"], columns=wanted)
    return table.rename_columns(["file_index" if old and c == "row" else c for c in table.column_names])


def with_rows(table: pa.Table) -> pa.Table:
    """``table`` with a first column ``row``: the index of each row into the collection's embeddings."""
    pa = require("pyarrow")
    return table.add_column(0, "row", pa.array(range(len(table)), pa.int64()))


def iter_shards(directory: str | os.PathLike, manifest: dict[str, Any] | None = None, *,
                verify: bool = True) -> Iterator[tuple[np.ndarray, pa.Table]]:
    """Yield each shard's ``(embeddings, metadata table)`` in order, checking its files' sha256."""
    directory = Path(directory)
    manifest = manifest or read_manifest(directory)
    for shard in manifest["shards"]:
        files = {k: directory / shard[k]["file"] for k in ("embeddings", "metadata")}
        if verify and not _verified(directory, shard):
            raise ValueError(f"shard {shard['index']} of {directory} ({files['embeddings'].name}, "
                             f"{files['metadata'].name}) does not match the manifest's sha256: rerun `ssl-zoo embed` "
                             "with the same arguments to redo it")
        yield np.load(files["embeddings"]), read_metadata(directory, manifest, shard)


def load_collection(directory: str | os.PathLike, *, verify: bool = True) -> tuple[np.ndarray, pa.Table]:
    """All embeddings ``(rows, feature_dim)`` and their metadata table, row for row: ``row`` (the index into
    the embeddings), ``file_index`` (the file's position in the input list, which skips failed files),
    ``path``, ``label``, ``width``, ``height``."""
    manifest = read_manifest(directory)
    shards = list(iter_shards(directory, manifest, verify=verify))
    embeddings = np.concatenate([e for e, _ in shards]) if shards else np.zeros((0, manifest["feature_dim"]))
    return embeddings, with_rows(require("pyarrow").concat_tables([t for _, t in shards]))


