"""Frozen-feature evaluation: feature extraction, k-NN and linear probes, and the model-card protocol."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data import ImageArrays, load_cifar10, to_float_nchw
from .protocol import BATCH_NORM_MODES, SOLVERS

ArrayLike = np.ndarray | torch.Tensor
NOTEBOOK_BATCH_SIZE = 256  # the notebook's DataLoader batch: what per-batch BatchNorm statistics depend on
WEIGHTED_KNN_K, WEIGHTED_KNN_TEMPERATURE = 200, 0.1  # lightly's benchmarks (knn_k=200, knn_t=0.1)
SKLEARN_TOL = 1e-4  # LogisticRegression's default tol: its L-BFGS stops at max |gradient| <= tol
_SCORE_BYTES = 1 << 27  # k-NN: test rows per chunk so that one chunk's float32 scores take ~128 MB
_BLOCK = 32  # k-NN: columns per block of the two-stage top-k


@dataclass
class ProbeResult:
    """Accuracy in [0, 1], per-class accuracy (NaN for classes absent from the test set),
    the test predictions, and the protocol that produced them (for model cards)."""

    accuracy: float
    per_class_accuracy: np.ndarray
    predictions: np.ndarray
    protocol: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"ProbeResult(accuracy={self.accuracy:.4f}, protocol={self.protocol})"


def _batches(data: Any, batch_size: int) -> tuple[Iterable[torch.Tensor], int | None]:
    """Yield image batches from arrays, tensors, ImageArrays, or an iterable of batches."""
    if isinstance(data, ImageArrays):
        data = data.images
    if isinstance(data, (np.ndarray, torch.Tensor)):
        if len(data) == 0:
            raise ValueError("extract_features: no images (empty input)")
        n = len(data)
        return (data[i:i + batch_size] for i in range(0, n, batch_size)), -(-n // batch_size)
    if isinstance(data, Iterable):
        total = len(data) if hasattr(data, "__len__") else None
        return ((b[0] if isinstance(b, (tuple, list)) else b) for b in data), total
    raise TypeError(f"extract_features: unsupported data of type {type(data).__name__}; pass uint8 "
                    "(N, H, W, 3) images, a float (N, 3, H, W) tensor, ImageArrays or a DataLoader")


@contextmanager
def _frozen(model: nn.Module, batch_norm: str) -> Iterator[None]:
    """Eval mode for the duration; ``batch-stats`` makes BatchNorm layers normalise each batch by
    its own statistics (what a model left in train mode does) without touching their running stats."""
    if batch_norm not in BATCH_NORM_MODES:
        raise ValueError(f"batch_norm must be one of {BATCH_NORM_MODES}, got {batch_norm!r}")
    was_training = model.training
    model.eval()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    tracking = [m.track_running_stats for m in norms]
    if batch_norm == "batch-stats":
        for m in norms:  # training=True with track_running_stats=False: batch statistics, no buffer updates
            m.train()
            m.track_running_stats = False
    try:
        yield
    finally:
        for m, track in zip(norms, tracking):
            m.track_running_stats = track
        model.train(was_training)


def extract_features(
    model: nn.Module, data: Any, *, normalize: bool = False, batch_size: int = 512,
    preprocess: Callable[[Any], torch.Tensor] | None = None, device: str | torch.device | None = None,
    progress: bool | None = None, batch_norm: str = "eval", desc: str = "features",
) -> torch.Tensor:
    """Run a frozen model over images and return float32 CPU features ``(N, D)``.

    ``data``: uint8 ``(N, H, W, 3)`` arrays (scaled like ToTensor), float ``(N, 3, H, W)``
    tensors, ``ImageArrays``, or an iterable of such batches / ``(images, labels)`` pairs.
    The model may return a tensor or a tuple/list whose first element is the representation.
    Runs under ``inference_mode`` in eval mode and restores the model's previous mode;
    ``batch_norm="batch-stats"`` normalises each batch by its own BatchNorm statistics instead
    (features then depend on ``batch_size`` and the batch composition).
    ``progress=None`` shows a bar for runs of 20+ batches on a terminal.
    """
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batches, total = _batches(data, batch_size)
    show = progress if progress is not None else (total is None or total >= 20)
    out = []
    with _frozen(model, batch_norm), torch.inference_mode():
        for x in tqdm(batches, total=total, desc=desc, disable=not show or None, leave=False):
            if preprocess is not None:
                x = preprocess(x)
            elif x.dtype == torch.uint8 or (isinstance(x, np.ndarray) and x.dtype == np.uint8):
                x = to_float_nchw(x)
            y = model(torch.as_tensor(x).to(device, non_blocking=True))
            if isinstance(y, (tuple, list)):
                y = y[0]
            if normalize:
                y = F.normalize(y.float(), dim=1)
            out.append(y.float().cpu())
    return torch.cat(out)


class _Progress:
    """What a long evaluation says while it runs: a tqdm bar per phase on a terminal, one line per
    phase otherwise (logs, CI), so a run of minutes is never silent."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bars = enabled and sys.stderr.isatty()

    def phase(self, text: str, *, has_bar: bool = True) -> bool:
        """Announce a phase (a line, unless a bar will show it); return whether to draw its bar."""
        if self.enabled and not (self.bars and has_bar):
            tqdm.write(f"{text} ...", file=sys.stderr)
        return self.bars and has_bar


def _protocol_features(encoder: nn.Module, data: ImageArrays, *, batch_norm: str, order: torch.Tensor,
                       device: str | torch.device | None, progress: bool, desc: str) -> torch.Tensor:
    """Features in ``data``'s order; with ``batch-stats`` computed in batches of 256 taken in
    ``order``, since each feature then depends on the other images of its batch."""
    pre = getattr(encoder, "preprocess", None)
    if batch_norm == "eval":
        return extract_features(encoder, data, preprocess=pre, device=device, progress=progress, desc=desc)
    feats = extract_features(encoder, data.images[order.numpy()], preprocess=pre, device=device, progress=progress,
                             desc=desc, batch_norm="batch-stats", batch_size=NOTEBOOK_BATCH_SIZE)
    out = torch.empty_like(feats)
    out[order] = feats
    return out


def evaluate(encoder: nn.Module, bank: ImageArrays, test: ImageArrays, *, knn: bool = True, weighted_knn: bool = True,
             linear: bool = True, normalize: bool = True, batch_norm: str = "eval", solver: str = "fast",
             seed: int = 0, device: str | torch.device | None = None, progress: bool = False) -> dict[str, Any]:
    """The model-card protocol, written once: frozen features of ``bank`` and ``test`` (with the
    encoder's ``preprocess`` if it has one), L2-normalised as the notebook evaluates its trained
    models (``normalize=False``: raw features), then k-NN k=5 (Euclidean, sklearn's predictions),
    lightly's weighted k-NN (k=200, T=0.1, cosine; k capped at the bank size) and the linear
    probe (``solver``). ``batch_norm="batch-stats"`` reproduces a model left in train mode (the
    notebook's random-init baseline): batches of 256 in an order shuffled with ``seed``, the train
    split as the notebook's ``shuffle=True`` loader, the test split standing in for the class-mixed
    order of the CIFAR-10 release (the ImageFolder copy is sorted by class, and class-pure batches
    would normalise away most of what the features say).

    Returns accuracies by name (``knn5``, ``knn200``, ``linear``) and, under ``protocol``, each
    one's full protocol, including ``train_images`` and ``test_images``. ``progress``: report
    each phase on stderr (a bar on a terminal, a line otherwise).
    """
    if batch_norm not in BATCH_NORM_MODES:
        raise ValueError(f"batch_norm must be one of {BATCH_NORM_MODES}, got {batch_norm!r}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    report = _Progress(progress)
    shuffle = torch.Generator().manual_seed(seed)
    feats = {}
    for split, data in (("train", bank), ("test", test)):
        text = f"features: {split} {len(data)} images"
        feats[split] = _protocol_features(encoder, data, batch_norm=batch_norm, device=device, desc=text,
                                          order=torch.randperm(len(data), generator=shuffle),
                                          progress=report.phase(text))
    tx, vx, ty, vy = feats["train"], feats["test"], bank.labels, test.labels
    frame: dict[str, Any] = {"batch_norm": batch_norm, "train_images": len(bank), "test_images": len(test)}
    if batch_norm == "batch-stats":
        frame.update(batch_size=NOTEBOOK_BATCH_SIZE, shuffle_seed=seed)
    results: dict[str, ProbeResult] = {}
    if knn:
        results["knn5"] = knn_probe(tx, ty, vx, vy, k=5, normalize=normalize,
                                    progress=report.phase("k-NN (k=5)"))
    if weighted_knn:
        k = min(WEIGHTED_KNN_K, len(tx))
        results["knn200"] = knn_probe(tx, ty, vx, vy, k=k, weighted=True, temperature=WEIGHTED_KNN_TEMPERATURE,
                                      progress=report.phase(f"weighted k-NN (k={k})"))
    if linear:
        report.phase(f"linear probe ({solver} solver)", has_bar=False)
        results["linear"] = linear_probe(tx, ty, vx, vy, solver=solver, normalize=normalize)
    out: dict[str, Any] = {name: r.accuracy for name, r in results.items()}
    out["protocol"] = {name: {**r.protocol, **frame} for name, r in results.items()}
    return out


def probe(encoder: nn.Module, dataset: str = "cifar10", *, knn: bool = True, linear: bool = True,
          weighted_knn: bool | None = None, train_per_class: int | None = None, test_per_class: int | None = None,
          data: str | None = None, **options: Any) -> dict[str, Any]:
    """The model-card protocol (``evaluate``) on CIFAR-10: train bank of all 50,000 images (or the
    first ``train_per_class`` per class), all 10,000 test images (or ``test_per_class``).
    ``knn`` runs both k-NN probes unless ``weighted_knn`` says otherwise; ``options`` go to
    ``evaluate`` (``normalize``, ``batch_norm``, ``solver``, ``seed``, ``device``, ``progress``)."""
    if dataset != "cifar10":
        raise ValueError(f"dataset {dataset!r} is not supported; only 'cifar10'")
    train, test = load_cifar10("train", data), load_cifar10("test", data)
    train = train.per_class(train_per_class) if train_per_class else train
    test = test.per_class(test_per_class) if test_per_class else test
    return evaluate(encoder, train, test, knn=knn, linear=linear,
                    weighted_knn=knn if weighted_knn is None else weighted_knn, **options)


def _check_probe_inputs(train_x, train_y, test_x, test_y, normalize: bool = False) -> tuple[torch.Tensor, ...]:
    tensors = []
    for name, x, is_feat in (("train_features", train_x, True), ("train_labels", train_y, False),
                             ("test_features", test_x, True), ("test_labels", test_y, False)):
        t = torch.as_tensor(x)
        if t.ndim != (2 if is_feat else 1):
            raise ValueError(f"{name} must be {'2-D (N, D)' if is_feat else '1-D (N,)'}, got shape {tuple(t.shape)}")
        if len(t) == 0:
            raise ValueError(f"{name} is empty")
        if is_feat and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} holds NaN or infinite values; check the encoder's outputs")
        tensors.append(t.float() if is_feat else t.long())
    tx, ty, vx, vy = tensors
    if len(tx) != len(ty) or len(vx) != len(vy):
        raise ValueError(f"features and labels differ in length: train {len(tx)} vs {len(ty)}, "
                         f"test {len(vx)} vs {len(vy)}")
    if tx.shape[1] != vx.shape[1]:
        raise ValueError(f"train and test features differ in dimension: {tx.shape[1]} vs {vx.shape[1]}")
    if min(ty.min(), vy.min()) < 0:
        raise ValueError("labels must be non-negative class indices")
    if normalize:
        tx, vx = F.normalize(tx, dim=1), F.normalize(vx, dim=1)
    return tx, ty, vx, vy


def _result(pred: torch.Tensor, test_y: torch.Tensor, num_classes: int, protocol: dict) -> ProbeResult:
    pred, test_y = pred.cpu().numpy(), test_y.cpu().numpy()
    correct = pred == test_y
    per_class = np.array([correct[test_y == c].mean() if (test_y == c).any() else np.nan
                          for c in range(num_classes)])
    return ProbeResult(float(correct.mean()), per_class, pred, protocol)


def knn_probe(
    train_features: ArrayLike, train_labels: ArrayLike, test_features: ArrayLike, test_labels: ArrayLike,
    *, k: int = 5, weighted: bool = False, temperature: float = WEIGHTED_KNN_TEMPERATURE, normalize: bool = False,
    chunk_size: int | None = None, progress: bool = False,
) -> ProbeResult:
    """k-nearest-neighbour classification of test features by train features.

    ``weighted=False``: majority vote of the k nearest by Euclidean distance, vote ties to the
    smallest label: the predictions of sklearn's ``KNeighborsClassifier(n_neighbors=k)``. The
    neighbours are exact (``_Nearest``); only where train rows are exactly equidistant at the k-th
    place may sklearn differ, as its pick among them depends on its heaps and thread chunks
    (ours: the lowest indices).
    ``weighted=True``: the SSL literature's weighted k-NN in the form of lightly's benchmarks:
    cosine similarity on L2-normalised features, each neighbour votes ``exp(sim / temperature)``
    (k=200, temperature 0.1). ``normalize``: L2-normalise the features first (the notebook's
    protocol for trained models). Test rows go ``chunk_size`` at a time (default: ~128 MB of
    scores per chunk), so the full distance matrix never exists.
    """
    tx, ty, vx, vy = _check_probe_inputs(train_features, train_labels, test_features, test_labels,
                                         normalize or weighted)
    if not 1 <= k <= len(tx):
        raise ValueError(f"k={k} must be between 1 and the number of training samples ({len(tx)})")
    if weighted and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    num_classes = int(max(ty.max(), vy.max())) + 1
    chunk = chunk_size or max(1, min(4096, _SCORE_BYTES // (4 * len(tx))))
    nearest = None if weighted else _Nearest(tx)
    cosine = _scorer(tx, torch.zeros(len(tx)), pad=-torch.finfo().max) if weighted else None
    preds = []
    for start in tqdm(range(0, len(vx), chunk), desc=f"k-NN (k={k})", disable=not progress, leave=False):
        q = vx[start:start + chunk]
        if weighted:
            sim, idx = _top(_score(q, cosine), k, largest=True)
            votes = torch.exp(sim / temperature)
        else:
            idx = nearest(q, k)
            votes = torch.ones_like(idx, dtype=torch.float32)
        scores = torch.zeros(len(q), num_classes).scatter_add_(1, ty[idx], votes)
        preds.append(scores.argmax(1))  # the first maximum: ties to the smallest label, as sklearn
    if weighted:
        protocol = {"probe": "knn", "k": k, "weighted": True, "temperature": temperature, "distance": "cosine",
                    "features_normalized": True,
                    "implementation": "zoo.knn_probe: cosine top-k, votes exp(sim/T) (lightly's knn_predict)"}
    else:
        protocol = {"probe": "knn", "k": k, "weighted": False, "distance": "euclidean",
                    "features_normalized": normalize,
                    "implementation": f"zoo.knn_probe: sklearn KNeighborsClassifier(n_neighbors={k})'s predictions"}
    return _result(torch.cat(preds), vy, num_classes, protocol)


class _Nearest:
    """The exact k nearest train rows of query rows by Euclidean distance, among exactly
    equidistant rows the lowest indices.

    One float32 matmul scores every train row, ``|t|^2 - 2 q.t`` (``[q, 1] . [-2t, |t|^2]``), and
    Higham's bound ``gamma_(D+3) (2 |q| |t| + |t|^2)`` on its rounding error ``e`` sorts each
    shortlisted row into: surely among the k nearest (score below the k-th score - 2e), surely
    not (above the k-th + 2e), or in the band between, decided by exact float64 distances. Only
    the band is re-ranked (usually one to three rows); a shortlist that ends inside the band grows.
    """

    def __init__(self, train: torch.Tensor) -> None:
        self.train = train
        sq = (train * train).sum(1, dtype=torch.float64)
        self.scorer = _scorer(train * -2, sq.float(), pad=torch.finfo().max)
        unit = 2.0 ** -24 * (train.shape[1] + 3)  # the matmul's D + 1 terms, |t|^2's products and rounding
        self.gamma, self.t_max = 1.01 * unit / (1 - unit), float(sq.max().sqrt())

    def __call__(self, q: torch.Tensor, k: int) -> torch.Tensor:
        """Indices ``(B, k)`` of the k nearest train rows of each query row."""
        n = len(self.train)
        if k == n:
            return torch.arange(n).expand(len(q), n)
        scores = _score(q, self.scorer)
        err = self.gamma * (2 * q.norm(dim=1).double() * self.t_max + self.t_max ** 2)
        out = torch.empty(len(q), k, dtype=torch.long)
        rows, m = torch.arange(len(q)), min(n, k + 16)
        while len(rows):
            vals, cand = _top(scores if len(rows) == len(q) else scores[rows], m)
            vals, e = vals.double(), err[rows, None]
            kth = vals[:, k - 1:k]
            sure, band = vals < kth - 2 * e, (vals >= kth - 2 * e) & (vals <= kth + 2 * e)
            key = torch.full_like(vals, float("inf")).masked_fill_(sure, -1.0)
            r, c = band.nonzero(as_tuple=True)
            key[r, c] = (self.train[cand[r, c]].double() - q[rows[r]].double()).pow_(2).sum(1)
            cand, by_index = cand.sort(dim=1)  # so that the stable sort puts the lowest index first among ties
            pick = cand.gather(1, key.gather(1, by_index).argsort(dim=1, stable=True)[:, :k])
            done = (vals[:, -1:] > kth + 2 * e).squeeze(1) | (m == n)  # nothing in the band left out
            out[rows[done]] = pick[done]
            rows, m = rows[~done], min(n, 4 * m)
        return out


def _top(scores: torch.Tensor, m: int, *, largest: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``scores.topk(m, dim=1, largest=largest)`` (sorted), for rows of a multiple of ``_BLOCK``
    columns: a row's m best lie in the m blocks with the best extremes, so one cheap min (max)
    pass and two small top-k's replace a top-k over every column (3x faster; ``topk`` alone took
    as long as the k-NN matmul)."""
    blocks = scores.view(len(scores), -1, _BLOCK)
    if m >= blocks.shape[1]:
        return scores.topk(m, dim=1, largest=largest)
    extremes = blocks.amax(2) if largest else blocks.amin(2)
    columns = (extremes.topk(m, dim=1, largest=largest).indices[:, :, None] * _BLOCK + torch.arange(_BLOCK)).flatten(1)
    vals, at = scores.gather(1, columns).topk(m, dim=1, largest=largest)
    return vals, columns.gather(1, at)


def _scorer(weights: torch.Tensor, offsets: torch.Tensor, *, pad: float) -> np.ndarray:
    """Rows ``[w, offset]`` for ``_score``, padded to a multiple of ``_BLOCK`` rows ``[0, pad]`` (a
    score no top-k picks), so that scores split into blocks for ``_top``."""
    padding = F.pad(torch.zeros(-len(weights) % _BLOCK, weights.shape[1]), (0, 1), value=pad)
    return torch.cat([torch.cat([weights, offsets[:, None]], 1), padding]).numpy()


def _score(q: torch.Tensor, scorer: np.ndarray) -> torch.Tensor:
    """``q . w + offset`` for every scorer row ``[w, offset]``: one float32 matmul through numpy's
    BLAS (OpenBLAS; torch's MKL sgemm runs at ~0.5x its speed on AMD CPUs, on par elsewhere)."""
    return torch.from_numpy(torch.cat([q, torch.ones(len(q), 1)], 1).numpy() @ scorer.T)


def linear_probe(
    train_features: ArrayLike, train_labels: ArrayLike, test_features: ArrayLike, test_labels: ArrayLike,
    *, solver: str = "fast", C: float = 1.0, max_iter: int | None = None, normalize: bool = False,
) -> ProbeResult:
    """Multinomial logistic regression on frozen features, L2 penalty ``1 / C`` (sklearn's objective).

    ``solver="sklearn"``: the notebook's ``LogisticRegression(max_iter=1000)``.
    ``solver="fast"``: the same objective, minimised by the same L-BFGS-B (scipy) with sklearn's
    stopping rule, but in preconditioned coordinates (``_fast_logistic``): within 0.3 points of
    sklearn and several times faster on every feature set of ``benchmarks/probes.py``. ``normalize``: L2-normalise the
    features first (the notebook's protocol for trained models).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if not C > 0:
        raise ValueError(f"C must be > 0, got {C}")
    tx, ty, vx, vy = _check_probe_inputs(train_features, train_labels, test_features, test_labels, normalize)
    num_classes = int(max(ty.max(), vy.max())) + 1
    max_iter = max_iter or (1000 if solver == "sklearn" else 500)
    if solver == "sklearn":
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=C, max_iter=max_iter).fit(tx.numpy(), ty.numpy())
        pred = torch.from_numpy(clf.predict(vx.numpy()))
        implementation = f"sklearn.linear_model.LogisticRegression(C={C}, max_iter={max_iter}) (lbfgs)"
    else:
        from threadpoolctl import threadpool_limits

        # One BLAS thread for the whole fit: the skinny N x D x K products and L-BFGS-B's vector
        # updates lose more to thread hand-offs than they gain (measured 1.2-4x faster than two
        # threads on 2 cores), and the answer does not depend on the machine's core count.
        with threadpool_limits(1, user_api="blas"):
            pred = _fast_logistic(tx, ty, vx, num_classes, C, max_iter)
        implementation = ("zoo.linear_probe: LogisticRegression's objective and stopping rule, scipy L-BFGS-B in "
                          "preconditioned coordinates")
    protocol = {"probe": "linear", "solver": solver, "C": C, "max_iter": max_iter, "tol": SKLEARN_TOL,
                "features_normalized": normalize, "implementation": implementation}
    return _result(pred, vy, num_classes, protocol)


def _fast_logistic(tx: torch.Tensor, ty: torch.Tensor, vx: torch.Tensor, num_classes: int, C: float,
                   max_iter: int) -> torch.Tensor:
    # sklearn's objective, mean(CE(x W + b)) + |W|^2 / (2 C N), by sklearn's own solver (scipy's
    # L-BFGS-B, stopped by sklearn's rule on the raw gradient), over W = P V with P^T A P = I and
    # A = c Cov(x) + I / (C N). The data term's Hessian is about c Cov(x) (c = 0.3: the best of
    # 0.03-2 on benchmarks/probes.py's sets) and the penalty's I / (C N), so in V the Hessian is
    # near the identity on raw and normalised features alike: 12-60 steps instead of sklearn's
    # 80-1000. The penalty is on W itself, so the minimiser is sklearn's; P only needs to be
    # roughly right (covariance of ~8k rows, Cholesky). Loss and gradient are written out in numpy:
    # its OpenBLAS runs the two N x D x K products several times faster than autograd's MKL calls
    # on AMD CPUs. Logits are kept classes x samples (K x N): the softmax's reductions over K then
    # run along contiguous rows, and W^T x^T, p x are OpenBLAS's fastest layouts for these skinny
    # products (measured 2x per evaluation against N x K logits).
    from scipy.optimize import minimize

    x, y, n, dim = tx.numpy(), ty.numpy(), len(tx), tx.shape[1]
    xt = np.ascontiguousarray(x.T)
    onehot = np.zeros((num_classes, n), dtype=np.float32)
    onehot[y, np.arange(n)] = 1
    mean = x.mean(0)
    sample = x[::max(1, n // 8192)] - mean
    a = torch.from_numpy(sample.T @ sample).double().mul_(0.3 / len(sample))
    a.diagonal().add_(1.0 / (C * n) + 1e-9 * float(a.trace()) / dim)
    chol = torch.linalg.cholesky(a)  # A = L L^T, so P = L^-T
    precondition = torch.linalg.solve_triangular(chol.T, torch.eye(dim, dtype=torch.float64), upper=True)
    precondition = precondition.float().numpy()

    def weights(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = precondition @ theta[:-num_classes].reshape(dim, num_classes).astype(np.float32)
        return w, theta[-num_classes:].astype(np.float32) - mean @ w

    last: dict[str, Any] = {}

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = weights(theta)
        z = np.ascontiguousarray(w.T) @ xt + b[:, None]
        z -= z.max(0)
        p = np.exp(z)
        total = p.sum(0)
        loss = float(np.log(total).sum() - (z * onehot).sum()) / n + float((w * w).sum()) / (2 * C * n)
        p /= total
        p -= onehot
        p /= n  # d loss / d logits
        grad_b = p.sum(1)
        grad_w = (p @ x).T - np.outer(mean, grad_b) + w / (C * n)
        # sklearn's stopping rule, on its own (uncentred) coordinates: max |gradient| <= tol
        last.update(theta=theta, converged=max(np.abs(grad_w + np.outer(mean, grad_b)).max(),
                                              np.abs(grad_b).max()) <= SKLEARN_TOL)
        return loss, np.concatenate([(precondition.T @ grad_w).ravel(), grad_b]).astype(np.float64)

    def stop_where_sklearn_would(theta: np.ndarray) -> None:  # called after each iteration
        if last["converged"] and np.array_equal(last["theta"], theta):
            raise StopIteration

    fit = minimize(loss_and_grad, np.zeros(dim * num_classes + num_classes), jac=True, method="L-BFGS-B",
                   callback=stop_where_sklearn_would,
                   options={"maxiter": max_iter, "gtol": 0, "ftol": 64 * np.finfo(float).eps, "maxls": 50})
    w, b = weights(fit.x)
    return torch.from_numpy((vx.numpy() @ w + b).argmax(1))
