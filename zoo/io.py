"""File helpers used everywhere: the model folder's file names, sha256 of a file, atomic writes that survive a crash."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


# A model folder, the Hub layout of huggingface_hub's ModelHubMixin (with a README.md card when published).
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` through ``write(fileobj)`` into a temporary sibling, fsync it, rename it into
    place and fsync the directory: readers see the old file or the new one, never a part."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {path.parent} does not exist; create it or choose "
                                "another path")
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    # Not tempfile.mkstemp, which always creates 0600: mode 0o666 here gets the umask, as open() does.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """``atomic_write`` of ``data``."""
    atomic_write(path, lambda f: f.write(data))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``atomic_write`` of ``obj`` as indented JSON with a final newline."""
    write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_jsonl(path: str | os.PathLike, rows: list[Any]) -> None:
    """``atomic_write`` of ``rows`` as JSON lines."""
    write_bytes(path, "".join(json.dumps(row) + "\n" for row in rows).encode())


def remove_stale_temps(path: str | os.PathLike) -> None:
    """Delete the temporary siblings a killed ``atomic_write`` of ``path`` left behind (only the file's owner
    may call this: a writer still at work would lose its temporary file)."""
    path = Path(path)
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def canonical_safetensors(blob: bytes) -> bytes:
    """Safetensors bytes with their JSON header's keys sorted: the same tensors and metadata give the same bytes
    (the library writes its metadata map in an order that varies between processes, so a sha256 would not pin)."""
    size = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8:8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the data starts 8-byte aligned, as the format pads it
    return len(header).to_bytes(8, "little") + header + blob[8 + size:]
