"""Probe and feature-extraction speed, side by side in one run, on real CIFAR-10 features.

    nice -n 10 python benchmarks/probes.py [--trained RUN_DIR]

Feature sets: the random-init torchvision ResNet-18 (the notebook's baseline) and a briefly trained
encoder (default ``~/ssl-zoo-runs/probe-bench-simclr``, made by ``ssl-zoo train simclr --preset quick
--epochs 5 --out ~/ssl-zoo-runs/probe-bench-simclr``), each raw and L2-normalised, at three sizes
(balanced: the first n/10 images of each class). On every one: the fast linear probe against the
notebook's sklearn LogisticRegression(max_iter=1000), and zoo's k-NN (k=5) against sklearn's
KNeighborsClassifier, both timed in the same run; plus feature-extraction modes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.neighbors import KNeighborsClassifier

from report import write_report
import zoo
from zoo import build_encoder, extract_features, knn_probe, linear_probe, load_cifar10

SIZES = ((10_000, 2_000), (20_000, 5_000), (50_000, 10_000))
DEFAULT_TRAINED = Path("~/ssl-zoo-runs/probe-bench-simclr").expanduser()
REPEATS = 2


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def best_of(fn, repeats: int = REPEATS):
    """The output and the shortest of ``repeats`` timings (the machine's other load only adds time)."""
    runs = [timed(fn) for _ in range(repeats)]
    return runs[0][0], min(seconds for _, seconds in runs)


def extraction_rows(images: np.ndarray) -> list[dict]:
    torch.manual_seed(0)
    model = build_encoder({"architecture": "resnet18_cifar"}).eval()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255

    def eager_no_grad():
        with torch.no_grad():
            return torch.cat([model(x[i:i + 256]) for i in range(0, len(x), 256)])

    variants = [("eager, no_grad", eager_no_grad),
                ("extract_features (inference_mode)", lambda: extract_features(model, images, batch_size=256))]
    rows = []
    for name, fn in variants:
        fn()  # warm-up
        _, seconds = timed(fn)
        rows.append({"variant": name, "images/s": round(len(x) / seconds, 1)})
    model.to(memory_format=torch.channels_last)
    extract_features(model, images, batch_size=256)
    _, seconds = timed(lambda: extract_features(model, images, batch_size=256))
    rows.append({"variant": "extract_features, channels_last", "images/s": round(len(x) / seconds, 1)})
    return rows


def balanced(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of the first ``n / 10`` rows of each class."""
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:n // 10] for c in range(10)]))


def probe_row(name: str, tx, ty, vx, vy) -> dict:
    """One feature set at one size: both linear probes and both k-NN (k=5) probes, same run."""
    sk_lin, t_sk_lin = best_of(lambda: linear_probe(tx, ty, vx, vy, solver="sklearn"))
    fast_lin, t_fast_lin = best_of(lambda: linear_probe(tx, ty, vx, vy, solver="fast"))
    sk_knn, t_sk_knn = best_of(lambda: KNeighborsClassifier(n_neighbors=5).fit(tx.numpy(), ty).predict(vx.numpy()))
    knn, t_knn = best_of(lambda: knn_probe(tx, ty, vx, vy, k=5))
    print(f"{name} {len(tx)}/{len(vx)}: linear {t_sk_lin:.2f} s vs {t_fast_lin:.2f} s, "
          f"k-NN {t_sk_knn:.2f} s vs {t_knn:.2f} s", flush=True)
    return {
        "features": name, "train / test": f"{len(tx)} / {len(vx)}",
        "linear: sklearn s": round(t_sk_lin, 2), "fast s": round(t_fast_lin, 2),
        "speed-up": round(t_sk_lin / t_fast_lin, 1),
        "sklearn %": round(100 * sk_lin.accuracy, 2), "fast %": round(100 * fast_lin.accuracy, 2),
        "agreement": round(float((fast_lin.predictions == sk_lin.predictions).mean()), 4),
        "k-NN k=5: sklearn s": round(t_sk_knn, 2), "zoo s": round(t_knn, 2),
        "k-NN speed-up": round(t_sk_knn / t_knn, 1),
        "k-NN agreement": round(float((knn.predictions == sk_knn).mean()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trained", type=Path, default=DEFAULT_TRAINED, help="a trained run directory (encoder)")
    args = parser.parse_args()
    if not (args.trained / "model.safetensors").is_file():
        raise SystemExit(f"no trained encoder at {args.trained}: run `nice -n 10 ssl-zoo train simclr --preset quick "
                         f"--epochs 5 --out {args.trained}` first (a few minutes), or pass --trained RUN_DIR")
    train, test = load_cifar10("train"), load_cifar10("test")
    encoders = {"random-init ResNet-18": zoo.load("random-init-resnet18"),
                f"trained ({args.trained.name})": zoo.load(str(args.trained))}
    rows = []
    for label, encoder in encoders.items():
        tx, vx = (extract_features(encoder, split, preprocess=encoder.preprocess) for split in (train, test))
        for normalize in (False, True):
            feats = (F.normalize(tx, dim=1), F.normalize(vx, dim=1)) if normalize else (tx, vx)
            name = f"{label}, {'L2-normalised' if normalize else 'raw'} ({tx.shape[1]}-d)"
            for n_train, n_test in SIZES:
                i, j = balanced(train.labels, n_train), balanced(test.labels, n_test)
                rows.append(probe_row(name, feats[0][i], train.labels[i], feats[1][j], test.labels[j]))
    worst_linear = min(rows, key=lambda r: r["speed-up"])
    worst_knn = min(rows, key=lambda r: r["k-NN speed-up"])
    worst_gap = max(abs(r["fast %"] - r["sklearn %"]) for r in rows)
    notes = (f"**Minimum speed-up across sets: linear {worst_linear['speed-up']}x** ({worst_linear['features']}, "
             f"{worst_linear['train / test']}), **k-NN {worst_knn['k-NN speed-up']}x** ({worst_knn['features']}, "
             f"{worst_knn['train / test']}); largest accuracy gap fast vs sklearn {worst_gap:.2f} points. "
             "Trained encoder: `ssl-zoo train simclr --preset quick --epochs 5` (width-16 CIFAR ResNet-18, 128-d). "
             f"Seconds: the shorter of {REPEATS} runs. Each set: the first n/10 images of every class. sklearn: "
             "LogisticRegression(max_iter=1000) and KNeighborsClassifier(n_neighbors=5); agreement: share of test "
             "predictions equal to sklearn's. "
             "Command: `nice -n 10 python benchmarks/probes.py`.")
    print(write_report("probes", "Probes on real CIFAR-10 features: zoo vs sklearn, side by side", rows, notes))
    print(write_report("extraction", "Feature extraction, ResNet-18 CIFAR stem, 2,048 CIFAR-10 test images, batch 256",
                       extraction_rows(test.images[:2048]), "Command: `python benchmarks/probes.py`."))


if __name__ == "__main__":
    main()
