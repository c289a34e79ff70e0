"""The reader stage of ``ssl-zoo embed`` and of training on your own images: a collection's files in a fixed
order (a folder, a text file of paths, webdataset ``.tar`` shards, a CIFAR-10 split), and their decoding in
DataLoader workers, a failed file recorded, never fatal.

A webdataset shard (as img2dataset writes them) is a plain tar in which the files of one sample share a key
(``000123.jpg``, ``000123.txt``, ``000123.cls``, ...). Its members are read in place: one pass over the tar
headers (``tarfile``, no data read) gives each image's byte range, and a worker reads and decodes that range
as it would a file, so shards need no unpacking, load in any order and resume like folders. The ``webdataset``
package's streaming reader decodes a first pass 1.1-1.4x faster (``benchmarks/own_data_speed.py``: it lists no
headers first) but gives images no address to come back to, which resume, search results and the page need.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ..data import CIFAR10_CLASSES, CIFAR10_COUNTS, DatasetError, cifar10_root
from ..imagefile import (
    IMAGE_SUFFIXES,
    ImageLimits,
    ImageRejected,
    decode_bytes,
    decode_file,
)
from . import SPLIT_PREFIX, require


@dataclass(frozen=True)
class ImageList:
    """A collection's files in their fixed order, with labels when the layout gives them."""

    paths: list[str]
    labels: list[str] | None = None
    kind: str = "list"
    classes: tuple[str, ...] | None = None
    skipped: tuple[dict[str, str], ...] = ()  # {"path", "reason"} of files left out of the list
    members: TarMembers | None = None  # where each path's bytes lie when the collection is tar shards

    def digest(self) -> str:
        """sha256 of the ordered paths and labels: what a resumed run must find unchanged."""
        h = hashlib.sha256()
        for i, path in enumerate(self.paths):
            h.update(f"{path}\t{self.labels[i] if self.labels else ''}\n".encode())
        return h.hexdigest()


@dataclass(frozen=True)
class TarMembers:
    """The byte range of every image of a collection of tar shards: image ``i`` is ``size[i]`` bytes at
    ``offset[i]`` of shard ``shards[shard[i]]``."""

    shards: tuple[str, ...]
    shard: np.ndarray
    offset: np.ndarray
    size: np.ndarray

    def read(self, i: int, max_bytes: int) -> bytes:
        """The bytes of image ``i`` (at most ``max_bytes + 1``: the caller refuses more)."""
        return read_range(self.shards[self.shard[i]], int(self.offset[i]), min(int(self.size[i]), max_bytes + 1))


TAR_SEPARATOR = ".tar/"  # an image in a shard is named <shard>.tar/<member>


def is_tar_source(source: str) -> bool:
    """Whether ``source`` names webdataset shards: ``x.tar`` or a brace pattern such as ``shards/{00000..00009}.tar``."""
    return source.endswith(".tar")


def read_image_bytes(path: str, max_bytes: int) -> bytes:
    """The bytes of one collection file: a regular file, or a member of a tar shard (``<shard>.tar/<member>``);
    ``OSError`` when it is neither or is larger than ``max_bytes``."""
    shard, sep, member = path.rpartition(TAR_SEPARATOR)
    if sep and os.path.isfile(shard + ".tar"):
        offset, size = _tar_index(shard + ".tar", os.stat(shard + ".tar").st_ctime_ns)[member]  # KeyError: absent
        if size > max_bytes:
            raise OSError(f"{member} in {shard}.tar is over {max_bytes} bytes")
        return read_range(shard + ".tar", offset, size)
    if not os.path.isfile(path) or os.path.getsize(path) > max_bytes:
        raise OSError(f"not a regular file of at most {max_bytes} bytes")
    with open(path, "rb") as f:
        return f.read()


def read_range(path: str, offset: int, size: int) -> bytes:
    """``size`` bytes of a file from ``offset``: one image of a tar shard."""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


@lru_cache(maxsize=32)
def _tar_index(shard: str, ctime_ns: int) -> dict[str, tuple[int, int]]:
    """Each file member's (offset, size) in ``shard``, read once per change time (any rewrite moves it)."""
    with tarfile.open(shard, "r:") as tar:
        return {m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.isfile()}


def list_images(source: str | os.PathLike, follow_symlinks: bool = True) -> ImageList:
    """The files of ``source``: a folder of images (recursive, sorted; labelled by first-level
    sub-folder when every image has one, as in an ImageFolder), a text file of paths (one per line,
    relative ones taken from the list's folder; kept in the list's order), webdataset shards (``x.tar``
    or a brace pattern, ``shards/{00000..00099}.tar``; labelled by each sample's ``.cls`` member when every
    image has one) or ``cifar10:train|test``.

    A folder is walked safely: each real folder once (a symlink back into the tree is a loop, not more
    files), symbolic links not at all when ``follow_symlinks`` is false, and a file whose name is not
    UTF-8 is left out of the list and reported in ``skipped``. Whether a listed file is a regular file is
    checked when it is read (``zoo.imagefile.decode_file``): a FIFO is refused there, never opened."""
    text = os.fspath(source)
    if not text.strip():
        raise ValueError("SOURCE is empty: give a folder of images, a text file of image paths, webdataset shards "
                         f"(shards/{{00000..00009}}.tar) or {SPLIT_PREFIX}train / {SPLIT_PREFIX}test")
    if text.startswith(SPLIT_PREFIX):
        return _cifar10_split(text[len(SPLIT_PREFIX):])
    if is_tar_source(text):
        return _tar_shards(text)
    path = Path(text).expanduser()
    if path.is_dir():
        return _folder(path, follow_symlinks=follow_symlinks)
    if path.is_file():
        return _text_list(path)
    raise FileNotFoundError(f"SOURCE {text!r} not found: give a folder of images, a text file of image paths "
                            f"(one per line), webdataset shards (shards/{{00000..00009}}.tar) or a built-in split "
                            f"({SPLIT_PREFIX}train, {SPLIT_PREFIX}test)")


def _tar_shards(pattern: str) -> ImageList:
    """The images of webdataset shards in shard order, then member order, each with its byte range."""
    from braceexpand import braceexpand

    shards = [os.path.abspath(os.path.expanduser(p)) for p in braceexpand(pattern)]
    if missing := [p for p in shards if not os.path.isfile(p)]:
        raise FileNotFoundError(f"{len(missing)} of the {len(shards)} shards of {pattern!r} are missing (first: "
                                f"{missing[0]}): give existing .tar files, e.g. shards/{{00000..00009}}.tar")
    paths, where, classes, skipped = [], [], {}, []
    for number, shard in enumerate(shards):
        try:
            with tarfile.open(shard, "r:") as tar:  # headers only: tarfile seeks over each member's data
                members = tar.getmembers()
                labels = {m.name.rsplit(".", 1)[0]: _class_text(tar, m) for m in members
                          if m.isfile() and m.name.endswith(".cls")}
        except (tarfile.TarError, OSError) as e:
            skipped.append({"path": shard, "reason": f"not a readable (uncompressed) tar file: {e}"})
            continue
        base = shard + "/"  # each member named <shard>.tar/<member> (TAR_SEPARATOR)
        for m in members:
            if m.isfile() and m.name.lower().endswith(IMAGE_SUFFIXES):
                paths.append(base + m.name)
                where.append((number, m.offset_data, m.size))
                classes[base + m.name] = labels.get(m.name.rsplit(".", 1)[0])
    if not paths:
        why = f" ({skipped[0]['path']}: {skipped[0]['reason']})" if skipped else ""
        raise DatasetError(f"no image members ({', '.join(IMAGE_SUFFIXES)}) in the shards of {pattern!r}{why}")
    array = np.asarray(where, np.int64)
    members = TarMembers(tuple(shards), array[:, 0], array[:, 1], array[:, 2])
    labels = [classes[p] for p in paths]
    if any(label is None for label in labels):
        if (unlabelled := sum(label is None for label in labels)) < len(labels):
            print(f"{pattern}: no labels, since {unlabelled} of {len(labels)} images have no text .cls member",
                  file=sys.stderr, flush=True)
        return ImageList(paths, kind="webdataset", skipped=tuple(skipped), members=members)
    return ImageList(paths, labels, "webdataset", tuple(sorted(set(labels))), tuple(skipped), members)


def _class_text(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str | None:
    """A sample's class from its ``.cls`` member (webdataset's convention: the class as text), or None."""
    if member.size > 64:
        return None
    tar.fileobj.seek(member.offset_data)
    try:
        return tar.fileobj.read(member.size).decode("utf-8").strip() or None
    except UnicodeDecodeError:
        return None  # not text: no label


def _folder(root: Path, kind: str = "folder", follow_symlinks: bool = True) -> ImageList:
    root = Path(os.path.abspath(root))
    found, skipped, walked = [], [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_symlinks):
        real = os.stat(dirpath)
        if (real.st_dev, real.st_ino) in walked:  # reached again through a link: a loop or a second name
            dirnames[:] = []
            continue
        walked.add((real.st_dev, real.st_ino))
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        parts = Path(dirpath).relative_to(root).parts
        for name in filenames:
            if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            full = os.path.join(dirpath, name)
            if not follow_symlinks and os.path.islink(full):
                continue
            if not _utf8(full):
                skipped.append({"path": os.fsencode(full).decode("utf-8", "backslashreplace"),
                                "reason": "the file name is not valid UTF-8: rename it"})
                continue
            found.append((*parts, name))
    if not found:
        hint = (f"; it holds .tar files: give webdataset shards as a pattern, e.g. '{root}/{{00000..00009}}.tar'"
                if any(root.glob("*.tar")) else "")
        raise DatasetError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {root}{hint}")
    found.sort()  # by path components, so images sort by class first, as in ImageFolder
    paths = [str(root.joinpath(*parts)) for parts in found]
    if not all(len(parts) > 1 for parts in found):
        loose = [os.path.join(*parts) for parts in found if len(parts) == 1]
        if len(loose) < len(found):  # some in class folders, some not: say why there are no labels
            print(f"{root}: no labels, since {len(loose)} of {len(found)} images lie outside a class folder (first: "
                  f"{loose[0]}); move them into one to use the sub-folders as labels", file=sys.stderr, flush=True)
        return ImageList(paths, kind=kind, skipped=tuple(skipped))
    labels = [parts[0] for parts in found]
    return ImageList(paths, labels, kind, tuple(sorted(set(labels))), tuple(skipped))


def _utf8(path: str) -> bool:
    """Whether ``path`` (as os.walk gives it, undecodable bytes as surrogates) is valid UTF-8 text."""
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _text_list(path: Path) -> ImageList:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        what = ("a compressed tar: decompress it to .tar (shards are read in place, uncompressed)"
                if path.name.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")) else
                "an image: give the folder that holds it" if path.name.lower().endswith(IMAGE_SUFFIXES) else
                "not a text file of paths (one per line)")
        raise ValueError(f"SOURCE {path} is {what}; SOURCE is a folder of images, a text file of paths, webdataset "
                         f"shards (shards/{{00000..00009}}.tar) or {SPLIT_PREFIX}train / {SPLIT_PREFIX}test") from None
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


class DecodeDataset(Dataset):
    """Item ``i`` -> ``(i, uint8 (S, S, 3) image or None, width, height, failure reason or None)``, each file
    decoded within ``limits`` (``zoo.imagefile.decode_file``: the server's limits and formats).

    Paths live in one pyarrow array: DataLoader workers forked from this process would otherwise
    copy a list of Python strings page by page as they touch its refcounts (pytorch#13246).
    """

    def __init__(self, images: ImageList, size: int, limits: ImageLimits) -> None:
        pa = require("pyarrow")
        self.paths = pa.array(images.paths, pa.string())
        self.members = images.members
        self.size, self.limits = size, limits

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, int, int, str | None]:
        path = self.paths[i].as_py()
        try:
            if self.members is None:
                array, (width, height) = decode_file(path, self.size, self.limits)
            else:
                data = self.members.read(i, self.limits.max_file_bytes)
                array, (width, height) = decode_bytes(data, self.size, self.limits, path)
            return i, array, width, height, None
        except (ImageRejected, OSError) as e:  # the file fails, not the run
            return i, None, 0, 0, str(e) if isinstance(e, ImageRejected) else f"{type(e).__name__}: {e}"


def die_with_parent(parent: int, worker_id: int) -> None:
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


def collate(items: list[tuple]) -> _Batch:
    rows, arrays, widths, heights, reasons = zip(*items)
    good = [a for a in arrays if a is not None]
    size = next((a.shape[0] for a in good), 0)
    images = np.stack(good) if good else np.zeros((0, size, size, 3), np.uint8)
    return _Batch(np.asarray(rows, np.int64), images, np.array([a is not None for a in arrays]), list(widths),
                  list(heights), list(reasons))


