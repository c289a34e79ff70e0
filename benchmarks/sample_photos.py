"""A few hundred real photographs nobody here made, for training on your own images: the photographs shipped with
scikit-image (``skimage.data``) and scikit-learn (``load_sample_images``), cut into crops of many sizes and
shapes and saved as JPEG, PNG and WebP files of several modes, in one flat folder (no labels); with
``--shards``, the same images also as webdataset tar shards (``{key}.jpg`` + ``{key}.json``, as img2dataset
writes them).

    python benchmarks/sample_photos.py photos --shards shards   # then: ssl-zoo train simclr --data photos ...

Needs scikit-image (``pip install scikit-image``; the test extra has it).
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

# skimage.data's photographs (its synthetic images, logos and text pages left out), then scikit-learn's two.
SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "cat", "cell", "clock", "coffee", "coins", "grass", "gravel",
                  "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket")
FORMATS = (("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP"))


def source_photos() -> dict[str, np.ndarray]:
    """The photographs by name, as uint8 arrays (grayscale ones 2-D)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = {name: getattr(skimage.data, name)() for name in SKIMAGE_PHOTOS}
    sample = load_sample_images()
    photos |= {Path(f).stem: image for f, image in zip(sample.filenames, sample.images)}
    return photos


def make_photos(out: str | Path, count: int = 300, seed: int = 0) -> list[Path]:
    """Write ``count`` crops of the photographs into ``out`` (flat): each a random box of 20-100 % of the short
    side, aspect 0.6-1.7, resized to a long side of 40-320 px, saved as JPEG, PNG or WebP. Returns the files."""
    rng = np.random.default_rng(seed)
    photos = list(source_photos().items())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        name, array = photos[i % len(photos)]
        image = Image.fromarray(array)
        short = min(image.size)
        side = rng.uniform(0.2, 1.0) * short
        aspect = np.exp(rng.uniform(np.log(0.6), np.log(1.7)))
        w, h = min(image.width, side * aspect ** 0.5), min(image.height, side / aspect ** 0.5)
        left, top = rng.uniform(0, image.width - w), rng.uniform(0, image.height - h)
        crop = image.crop((round(left), round(top), round(left + w), round(top + h)))
        scale = rng.uniform(40, 320) / max(crop.size)
        crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))), Image.BILINEAR)
        ext, fmt = FORMATS[rng.integers(len(FORMATS))]
        path = out / f"{name}-{i:04d}.{ext}"
        crop.save(path, fmt, **({"quality": int(rng.integers(70, 96))} if fmt != "PNG" else {}))
        files.append(path)
    return files


def write_shards(files: list[Path], out: str | Path, per_shard: int = 100, labels: list[str] | None = None) -> str:
    """Write ``files`` as webdataset shards ``out/00000.tar, ...`` (``{key}.{ext}``, ``{key}.json`` with the source
    file name, and ``{key}.cls`` when ``labels`` are given); returns their brace pattern."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shards = [files[i:i + per_shard] for i in range(0, len(files), per_shard)]
    for number, shard in enumerate(shards):
        with tarfile.open(out / f"{number:05d}.tar", "w") as tar:
            for j, path in enumerate(shard):
                key = f"{number:05d}{j:04d}"
                members = {f"{key}{path.suffix}": path.read_bytes(), f"{key}.json": json.dumps({"source": path.name}).encode()}
                if labels is not None:
                    members[f"{key}.cls"] = labels[number * per_shard + j].encode()
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime = len(data), 0
                    tar.addfile(info, io.BytesIO(data))
    return str(out / f"{{00000..{len(shards) - 1:05d}}}.tar")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder to write the photographs into (flat, no labels)")
    parser.add_argument("--count", type=int, default=300, help="how many crops (default 300)")
    parser.add_argument("--shards", help="also write them as webdataset shards into this folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    files = make_photos(args.out, args.count, args.seed)
    print(f"{len(files)} photographs in {args.out}")
    if args.shards:
        print(f"webdataset shards: {write_shards(files, args.shards)}")


if __name__ == "__main__":
    main()
