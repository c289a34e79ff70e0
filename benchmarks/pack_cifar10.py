"""Pack the CIFAR-10 JPEG folder into one file that fits the GPU machine's 64 MiB transfer, and unpack it there.

60,000 JPEGs are 55 MB of bytes but 236 MB on disk as files; one ``.npz`` of their bytes (plus
paths) travels whole. Unpacking writes the same ImageFolder tree, byte for byte; both print the dataset README's checksum
(1ff432c9...) to compare.

    python benchmarks/pack_cifar10.py pack ../shared/data/cifar10-jpeg .gpu/cifar10-jpeg.npz
    python benchmarks/pack_cifar10.py unpack .gpu/cifar10-jpeg.npz /tmp/cifar10-jpeg
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

SPLITS = ("train", "test")  # the order of the dataset README's checksum


def pack(root: Path, target: Path) -> str:
    """Write every ``<split>/<class>/<file>.jpg`` under ``root`` into ``target``; return the content sha256."""
    paths = [p for split in SPLITS for p in sorted((root / split).rglob("*.jpg"))]
    if not paths:
        raise SystemExit(f"no JPEGs under {root}/train or {root}/test")
    blobs = [p.read_bytes() for p in paths]
    names = [str(p.relative_to(root)) for p in paths]
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez(target, names=np.frombuffer("\n".join(names).encode(), dtype=np.uint8), offsets=offsets,
             data=np.frombuffer(b"".join(blobs), dtype=np.uint8))
    return _digest(names, blobs)


def unpack(source: Path, root: Path) -> str:
    """Recreate the ImageFolder tree of ``source`` under ``root``; return the content sha256."""
    packed = np.load(source)
    names = packed["names"].tobytes().decode().split("\n")
    offsets, data = packed["offsets"], packed["data"]
    blobs = [data[offsets[i]:offsets[i + 1]].tobytes() for i in range(len(names))]
    for name, blob in zip(names, blobs):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
    return _digest(names, blobs)


def _digest(names: list[str], blobs: list[bytes]) -> str:
    """The dataset README's checksum: sha256 over each file's relative path then its bytes (train, then test)."""
    h = hashlib.sha256()
    for name, blob in zip(names, blobs):
        h.update(name.encode())
        h.update(blob)
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["pack", "unpack"])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    args = parser.parse_args()
    digest = (pack if args.action == "pack" else unpack)(args.source, args.target)
    print(f"{args.action}ed {args.source} -> {args.target}; content sha256 {digest}")


if __name__ == "__main__":
    main()
