"""The reader stage of ``ssl-zoo embed``: a collection's files in a fixed order (a folder, a text file of
paths, a CIFAR-10 split), and their decoding in DataLoader workers, a failed file recorded, never fatal."""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..data import CIFAR10_CLASSES, CIFAR10_COUNTS, DatasetError, cifar10_root
from ..imagefile import ImageLimits, ImageRejected, decode_file
from . import SPLIT_PREFIX, require


@dataclass(frozen=True)
class ImageList:
    """A collection's files in their fixed order, with labels when the layout gives them."""

    paths: list[str]
    labels: list[str] | None = None
    kind: str = "list"
    classes: tuple[str, ...] | None = None
    skipped: tuple[dict[str, str], ...] = ()  # {"path", "reason"} of files left out of the list

    def digest(self) -> str:
        """sha256 of the ordered paths and labels: what a resumed run must find unchanged."""
        h = hashlib.sha256()
        for i, path in enumerate(self.paths):
            h.update(f"{path}\t{self.labels[i] if self.labels else ''}\n".encode())
        return h.hexdigest()


def list_images(source: str | os.PathLike, follow_symlinks: bool = True) -> ImageList:
    """The files of ``source``: a folder of images (recursive, sorted; labelled by first-level
    sub-folder when every image has one, as in an ImageFolder), a text file of paths (one per line,
    relative ones taken from the list's folder; kept in the list's order) or ``cifar10:train|test``.

    A folder is walked safely: each real folder once (a symlink back into the tree is a loop, not more
    files), symbolic links not at all when ``follow_symlinks`` is false, and a file whose name is not
    UTF-8 is left out of the list and reported in ``skipped``. Whether a listed file is a regular file is
    checked when it is read (``zoo.imagefile.decode_file``): a FIFO is refused there, never opened."""
    text = os.fspath(source)
    if text.startswith(SPLIT_PREFIX):
        return _cifar10_split(text[len(SPLIT_PREFIX):])
    path = Path(text).expanduser()
    if path.is_dir():
        return _folder(path, follow_symlinks=follow_symlinks)
    if path.is_file():
        return _text_list(path)
    raise FileNotFoundError(f"SOURCE {text!r} not found: give a folder of images, a text file of image paths "
                            f"(one per line) or a built-in split ({SPLIT_PREFIX}train, {SPLIT_PREFIX}test)")


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
            if name.startswith(".") or not name.lower().endswith(IMG_EXTENSIONS):
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
        raise DatasetError(f"no image files ({', '.join(IMG_EXTENSIONS)}) under {root}")
    found.sort()  # by path components, so images sort by class first, as in ImageFolder
    paths = [str(root.joinpath(*parts)) for parts in found]
    if not all(len(parts) > 1 for parts in found):
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


class DecodeDataset(Dataset):
    """Item ``i`` -> ``(i, uint8 (S, S, 3) image or None, width, height, failure reason or None)``, each file
    decoded within ``limits`` (``zoo.imagefile.decode_file``: the server's limits and formats).

    Paths live in one pyarrow array: DataLoader workers forked from this process would otherwise
    copy a list of Python strings page by page as they touch its refcounts (pytorch#13246).
    """

    def __init__(self, paths: list[str], size: int, limits: ImageLimits) -> None:
        pa = require("pyarrow")
        self.paths = pa.array(paths, pa.string())
        self.size, self.limits = size, limits

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, int, int, str | None]:
        path = self.paths[i].as_py()
        try:
            array, (width, height) = decode_file(path, self.size, self.limits)
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


