"""Model-card figures of an encoder on CIFAR-10, drawn with matplotlib (Agg): the nearest training images of
one test image per class, a 2-D map of test features, per-class probe accuracy, and where the cells of the
feature map match between an image and its nearest neighbour; and one figure comparing several encoders."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import ImageArrays, default_cache_dir, load_cifar10
from ..io import atomic_write
from .probes import (
    WEIGHTED_KNN_K,
    WEIGHTED_KNN_TEMPERATURE,
    extract_features,
    knn_probe,
    linear_probe,
)

RETRIEVAL, EMBEDDING_MAP, PER_CLASS, MATCHES = "retrieval.png", "embedding_map.png", "per_class.png", "matches.png"
FIGURES = (RETRIEVAL, EMBEDDING_MAP, PER_CLASS, MATCHES)  # the card's figures, in the card's order
NEIGHBORS = 8  # training images shown per query
MAP_PER_CLASS = 500  # test images per class on the embedding map
MATCH_CLASSES = (0, 3, 7, 8)  # airplane, cat, horse, ship: the queries of the match heatmaps
SEED = 0
PROBE_LABELS = {"knn200": f"weighted k-NN (k={WEIGHTED_KNN_K}, T={WEIGHTED_KNN_TEMPERATURE})",
                "linear": "linear probe"}
WIDTH, DPI = 8.0, 100  # inches and dots per inch: 800 px, a model card's width
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class Retrieval:
    """The ``k`` nearest training images (cosine on L2-normalised features) of each query test image."""

    queries: np.ndarray  # (Q,) indices into the test split
    neighbors: np.ndarray  # (Q, k) indices into the train split, nearest first
    similarity: np.ndarray  # (Q, k) cosine similarity


@dataclass(frozen=True)
class Matches:
    """Query/neighbour pairs and, per feature-map cell, its best cosine similarity to the other image's cells."""

    queries: np.ndarray  # (P,) indices into the test split
    neighbors: np.ndarray  # (P,) indices into the train split
    query_best: np.ndarray  # (P, h, w): each query cell's best match among the neighbour's cells
    neighbor_best: np.ndarray  # (P, h, w): each neighbour cell's best match among the query's cells


class CardData:
    """An encoder on CIFAR-10, everything its figures show computed on first use: the splits (all images,
    or the first ``train_per_class`` / ``test_per_class`` per class), frozen features as the model-card
    protocol takes them (eval mode, the encoder's preprocessing), the retrieval, the matches, and the
    per-class accuracy with the embedding map (``summary``, cached on disk by the weights' sha256)."""

    def __init__(self, encoder: nn.Module, *, train_per_class: int | None = None, test_per_class: int | None = None,
                 map_per_class: int = MAP_PER_CLASS, data: str | None = None) -> None:
        self.encoder, self.data = encoder, data
        self.train_per_class, self.test_per_class, self.map_per_class = train_per_class, test_per_class, map_per_class

    @cached_property
    def train(self) -> ImageArrays:
        """The training split (the bank)."""
        return _split("train", self.train_per_class, self.data)

    @cached_property
    def test(self) -> ImageArrays:
        """The test split."""
        return _split("test", self.test_per_class, self.data)

    @cached_property
    def train_features(self) -> torch.Tensor:
        """Raw features of the training split."""
        return self._features(self.train, "train")

    @cached_property
    def test_features(self) -> torch.Tensor:
        """Raw features of the test split."""
        return self._features(self.test, "test")

    def _features(self, data: ImageArrays, split: str) -> torch.Tensor:
        return extract_features(self.encoder, data, preprocess=self.encoder.preprocess, desc=f"features: {split}")

    @cached_property
    def retrieval(self) -> Retrieval:
        """The ``NEIGHBORS`` nearest training images of the first test image of each class."""
        queries = first_of_each_class(self.test.labels, len(self.test.classes))
        similarity, neighbors = nearest(self.train_features, self.test_features[queries], NEIGHBORS)
        return Retrieval(queries, neighbors.numpy(), similarity.numpy())

    @cached_property
    def matches(self) -> Matches:
        """The queries of ``MATCH_CLASSES`` with their nearest training image, cell by cell."""
        rows = list(MATCH_CLASSES)
        queries, neighbors = self.retrieval.queries[rows], self.retrieval.neighbors[rows, 0]
        query_best, neighbor_best = cell_matches(self.encoder, self.test.images[queries], self.train.images[neighbors])
        return Matches(queries, neighbors, query_best.numpy(), neighbor_best.numpy())

    @cached_property
    def summary(self) -> dict[str, np.ndarray]:
        """Per-class accuracy of each probe (``knn200``, ``linear``), and the embedding map: ``map`` (N, 2)
        coordinates of the first ``map_per_class`` test images of each class, ``map_labels`` their labels."""
        sha256 = getattr(self.encoder, "info", {}).get("sha256")
        key = {"format": _CACHE_FORMAT, "sha256": sha256, "train_per_class": self.train_per_class,
               "test_per_class": self.test_per_class, "map_per_class": self.map_per_class, "seed": SEED}
        return _cached(key, self._summary) if sha256 else self._summary()

    def _summary(self) -> dict[str, np.ndarray]:
        mapped = self.test.per_class(self.map_per_class)
        accuracy = per_class_accuracy(self.train_features, self.train.labels, self.test_features, self.test.labels)
        return {**accuracy, "map": embedding_2d(self._features(mapped, "map")), "map_labels": mapped.labels}


def _split(split: str, per_class: int | None, data: str | None) -> ImageArrays:
    arrays = load_cifar10(split, data)
    return arrays.per_class(per_class) if per_class else arrays


def _cached(key: dict[str, Any], compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``compute()``'s arrays, kept in ``$SSL_ZOO_CACHE/figures`` under a hash of ``key``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    path = default_cache_dir() / "figures" / f"{digest}.npz"
    try:
        with np.load(path) as stored:
            return dict(stored)
    except (OSError, ValueError):  # not cached yet, or unreadable: compute it again
        arrays = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return arrays


def writable_folder(folder: str | os.PathLike) -> Path:
    """``folder``, created if needed; PermissionError saying what to do unless files can be written there."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"cannot create the folder {folder} ({e.strerror}): choose another with --out") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write to {folder}: choose a writable folder with --out")
    return folder


def first_of_each_class(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The index of the first image of each class."""
    return np.array([np.flatnonzero(labels == c)[0] for c in range(num_classes)])


def nearest(bank: torch.Tensor, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity and index ``(Q, k)`` of the ``k`` bank rows nearest each query row, nearest first."""
    return (F.normalize(queries, dim=1) @ F.normalize(bank, dim=1).T).topk(k, dim=1)


@torch.inference_mode()
def cell_similarity(encoder: nn.Module, a: np.ndarray, b: np.ndarray) -> torch.Tensor:
    """Cosine similarity ``(N, h, w, h, w)`` of each cell of ``a[n]``'s feature map (first two cell axes) to each
    cell of ``b[n]``'s (last two); ``a``, ``b``: uint8 ``(N, H, W, 3)`` images, ``encoder`` in eval mode."""
    qa, qb = (F.normalize(encoder.forward_features(encoder.preprocess(x)), dim=1) for x in (a, b))
    return torch.einsum("nchw,ncij->nhwij", qa, qb)


def cell_matches(encoder: nn.Module, a: np.ndarray, b: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per cell of ``a[n]`` its best similarity to a cell of ``b[n]``, and per cell of ``b[n]`` its best to one
    of ``a[n]``: two ``(N, h, w)`` maps."""
    similarity = cell_similarity(encoder, a, b)
    return similarity.flatten(3).amax(3), similarity.flatten(1, 2).amax(1)


def per_class_accuracy(train_x: torch.Tensor, train_y: np.ndarray, test_x: torch.Tensor,
                       test_y: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class test accuracy of the model-card protocol's weighted k-NN and linear probe (L2-normalised)."""
    k = min(WEIGHTED_KNN_K, len(train_x))
    knn = knn_probe(train_x, train_y, test_x, test_y, k=k, weighted=True, temperature=WEIGHTED_KNN_TEMPERATURE)
    linear = linear_probe(train_x, train_y, test_x, test_y, normalize=True)
    return {"knn200": knn.per_class_accuracy, "linear": linear.per_class_accuracy}


def embedding_2d(features: torch.Tensor) -> np.ndarray:
    """2-D t-SNE coordinates of L2-normalised features (cosine distances, PCA initialisation, seed ``SEED``)."""
    # scikit-learn's t-SNE, no new dependency: on 5,000 x 128 on 2 busy cores 29 s on one OpenMP thread (53 s
    # on two, the same map: its Barnes-Hut steps are too short to share), against openTSNE's 47 s and
    # umap-learn's 51-61 s (46 s of them numba compilation, again in every new process).
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    perplexity = min(30.0, (len(features) - 1) / 3)
    with threadpool_limits(1, user_api="openmp"):
        return TSNE(2, perplexity=perplexity, metric="cosine", init="pca", random_state=SEED).fit_transform(
            F.normalize(features, dim=1).numpy())


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("the card's figures need matplotlib: pip install 'ssl-zoo[figures]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    """The figure as PNG bytes at ``DPI``, in 256 colours (photographs' PNGs then stay under 300 KB); closes it."""
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    _pyplot().close(fig)
    image = Image.open(buffer).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    image.save(buffer, format="png", optimize=True)
    return buffer.getvalue()


def _image(ax: Any, image: np.ndarray, edge: str | None = None) -> None:
    """``image`` without ticks, framed in ``edge`` (no frame: None)."""
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(edge is not None)
        spine.set(color=edge, linewidth=3)


def retrieval_figure(data: CardData, title: str) -> bytes:
    """``RETRIEVAL``: per row a query, then its nearest training images framed green (same class) or red."""
    plt, found, classes = _pyplot(), data.retrieval, data.test.classes
    rows, columns = found.neighbors.shape[0], found.neighbors.shape[1] + 1
    height = 0.98 * rows + 1.1
    fig, axes = plt.subplots(rows, columns, figsize=(WIDTH, height), squeeze=False,
                             gridspec_kw={"wspace": 0.08, "hspace": 0.5})
    for row, (query, neighbors, similarity) in enumerate(zip(found.queries, found.neighbors, found.similarity)):
        label = data.test.labels[query]
        _image(axes[row, 0], data.test.images[query], "black")
        axes[row, 0].set_ylabel(classes[label], rotation=0, ha="right", va="center", fontsize=10)
        for column, (index, sim) in enumerate(zip(neighbors, similarity), 1):
            same = data.train.labels[index] == label
            _image(axes[row, column], data.train.images[index], "tab:green" if same else "tab:red")
            axes[row, column].set_xlabel(f"{sim:.2f}" if same else f"{sim:.2f}\n{classes[data.train.labels[index]]}",
                                         fontsize=7, labelpad=1, linespacing=1.0, va="top")
    axes[0, 0].set_title("query", fontsize=9)
    for column in range(1, columns):
        axes[0, column].set_title(f"#{column}", fontsize=9)
    fig.suptitle(f"{title}: the {columns - 1} nearest of {len(data.train):,} training images to a test image\n"
                 "cosine similarity below; green frame: same class as the query, red: another (named)", fontsize=10)
    fig.subplots_adjust(left=0.12, right=0.99, top=1 - 0.75 / height, bottom=0.035)
    return _png(fig)


def draw_embedding_map(ax: Any, coords: np.ndarray, labels: np.ndarray, classes: tuple[str, ...],
                       legend: bool = True) -> None:
    """Scatter ``coords`` coloured by class, without axis ticks (t-SNE's axes have no units)."""
    colors = _pyplot().get_cmap("tab10")
    for c, name in enumerate(classes):
        at = labels == c
        ax.scatter(coords[at, 0], coords[at, 1], s=2, color=colors(c), label=name, rasterized=True)
    ax.set(xticks=[], yticks=[], xlabel="t-SNE 1", ylabel="t-SNE 2")
    if legend:
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=5, frameon=False, fontsize=9)


def embedding_map_figure(data: CardData, title: str) -> bytes:
    """``EMBEDDING_MAP``: the t-SNE map of test features, coloured by class."""
    fig, ax = _pyplot().subplots(figsize=(WIDTH, 6.2))
    summary = data.summary
    draw_embedding_map(ax, summary["map"], summary["map_labels"], data.test.classes)
    ax.set_title(f"{title}: t-SNE of the features of {len(summary['map_labels']):,} CIFAR-10 test images "
                 f"({data.map_per_class} per class)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def draw_per_class(ax: Any, bars: dict[str, np.ndarray], classes: tuple[str, ...], title: str) -> None:
    """Grouped horizontal bars of per-class accuracy (%), one bar per entry of ``bars`` in each class, the
    classes top to bottom, under a legend titled ``title`` whose entries give their mean over the classes."""
    height = 0.8 / len(bars)
    y = np.arange(len(classes))
    for i, (name, accuracy) in enumerate(bars.items()):
        ax.barh(y + (i - (len(bars) - 1) / 2) * height, 100 * accuracy, height,
                label=f"{name}: {100 * np.nanmean(accuracy):.1f} %")
    ax.set(yticks=y, yticklabels=classes, xlim=(0, 100), xlabel="test accuracy (%)")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.legend(title=title, alignment="left", loc="lower left", bbox_to_anchor=(0, 1.0), ncol=min(len(bars), 3),
              frameon=False, fontsize=9, title_fontsize=10)


def per_class_figure(data: CardData, title: str) -> bytes:
    """``PER_CLASS``: per-class test accuracy of the weighted k-NN and the linear probe."""
    fig, ax = _pyplot().subplots(figsize=(WIDTH, 5.2), layout="constrained")
    draw_per_class(ax, {PROBE_LABELS[k]: data.summary[k] for k in PROBE_LABELS}, data.test.classes,
                   f"L2-normalised frozen features, bank of {len(data.train):,} training images, "
                   f"{len(data.test):,} test images")
    fig.suptitle(f"{title}: per-class CIFAR-10 test accuracy", fontsize=11)
    return _png(fig)


def matches_figure(data: CardData, title: str) -> bytes:
    """``MATCHES``: per query/neighbour pair, each cell's best cosine similarity to the other image's cells."""
    plt, found, classes = _pyplot(), data.matches, data.test.classes
    values = np.concatenate([found.query_best.ravel(), found.neighbor_best.ravel()])
    norm = plt.Normalize(float(values.min()), float(values.max()))
    rows, h, w = found.query_best.shape
    height = 1.45 * rows + 1.3
    fig, axes = plt.subplots(rows, 4, figsize=(WIDTH, height), squeeze=False,
                             gridspec_kw={"wspace": 0.06, "hspace": 0.08})
    for row, (query, neighbor) in enumerate(zip(found.queries, found.neighbors)):
        image, other = data.test.images[query], data.train.images[neighbor]
        panels = ((image, None), (image, found.query_best[row]), (other, found.neighbor_best[row]), (other, None))
        for ax, (picture, best) in zip(axes[row], panels):
            _image(ax, picture)
            if best is not None:
                heat = ax.imshow(best, cmap="viridis", norm=norm, alpha=0.75, interpolation="nearest",
                                 extent=(-0.5, picture.shape[1] - 0.5, picture.shape[0] - 0.5, -0.5))
        axes[row, 0].set_ylabel(f"{classes[data.test.labels[query]]}\nneighbour:\n"
                                f"{classes[data.train.labels[neighbor]]}", rotation=0, ha="right", va="center",
                                fontsize=9)
    for column, text in enumerate(("test image", "its cells'\nbest match", "neighbour's cells'\nbest match",
                                   "nearest training\nimage")):
        axes[0, column].set_title(text, fontsize=9)
    fig.suptitle(f"{title}: where a test image and its nearest training image match\neach of the {h}x{w} "
                 "feature-map cells coloured by its highest cosine similarity to a cell of the other image", fontsize=10)
    fig.subplots_adjust(left=0.14, right=0.86, top=1 - 1.15 / height, bottom=0.02)
    bar = fig.colorbar(heat, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02)
    bar.set_label("cosine similarity", fontsize=9)
    return _png(fig)


def card_figures(encoder: nn.Module, title: str, **options: Any) -> dict[str, bytes]:
    """Every card figure of ``encoder`` as PNG bytes by file name (``FIGURES``); ``options`` go to ``CardData``
    (``train_per_class``, ``test_per_class``, ``map_per_class``, ``data``)."""
    data = CardData(encoder, **options)
    draw = {RETRIEVAL: retrieval_figure, EMBEDDING_MAP: embedding_map_figure, PER_CLASS: per_class_figure,
            MATCHES: matches_figure}
    return {name: draw[name](data, title) for name in FIGURES}


def compare_figure(summaries: dict[str, dict[str, np.ndarray]], classes: tuple[str, ...]) -> bytes:
    """Several encoders side by side: each one's embedding map (top row), and per-class accuracy of each probe
    with one bar per encoder (below); ``summaries``: ``CardData.summary`` by model name."""
    plt = _pyplot()
    names = list(summaries)
    fig = plt.figure(figsize=(WIDTH * 1.25, 3.6 + 4.8 * len(PROBE_LABELS)), layout="constrained")
    grid = fig.add_gridspec(1 + len(PROBE_LABELS), len(names), height_ratios=[3.6] + [4.8] * len(PROBE_LABELS))
    for i, name in enumerate(names):
        ax = fig.add_subplot(grid[0, i])
        draw_embedding_map(ax, summaries[name]["map"], summaries[name]["map_labels"], classes, legend=i == len(names) - 1)
        ax.set_title(f"{name}\nt-SNE of {len(summaries[name]['map_labels']):,} test images", fontsize=9)
    for row, (key, label) in enumerate(PROBE_LABELS.items(), 1):
        draw_per_class(fig.add_subplot(grid[row, :]), {name: summaries[name][key] for name in names}, classes,
                       f"per-class test accuracy: {label}")
    return _png(fig)
