"""Probe and feature-extraction speed, side by side in one run, on real CIFAR-10 features.

    python benchmarks/probes.py

Features: the random-init torchvision ResNet-18 (the seed's baseline) on all 50,000 train and
10,000 test images. Compares the fast linear probe with the seed's sklearn LogisticRegression,
torch k-NN with sklearn's KNeighborsClassifier, and feature-extraction modes.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from sklearn.neighbors import KNeighborsClassifier

from report import write_report
from zoo import build_encoder, extract_features, knn_probe, linear_probe, load_cifar10


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


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


def main() -> None:
    train, test = load_cifar10("train"), load_cifar10("test")
    torch.manual_seed(0)
    baseline = build_encoder({"architecture": "resnet18_imagenet"})
    tx, vx = extract_features(baseline, train), extract_features(baseline, test)
    ty, vy = train.labels, test.labels

    sk_lin, t_sk_lin = timed(lambda: linear_probe(tx, ty, vx, vy, solver="sklearn"))
    fast_lin, t_fast_lin = timed(lambda: linear_probe(tx, ty, vx, vy, solver="fast"))
    sk_knn, t_sk_knn = timed(lambda: KNeighborsClassifier(n_neighbors=5).fit(tx.numpy(), ty).predict(vx.numpy()))
    knn, t_knn = timed(lambda: knn_probe(tx, ty, vx, vy, k=5))
    wknn, t_wknn = timed(lambda: knn_probe(tx, ty, vx, vy, k=200, weighted=True))

    probe_rows = [
        {"probe": "linear, sklearn LogisticRegression(max_iter=1000) (seed)", "seconds": round(t_sk_lin, 2),
         "test accuracy %": round(100 * sk_lin.accuracy, 2), "speed-up": "1.0x", "agreement with sklearn": "-"},
        {"probe": "linear, zoo fast (whitened L-BFGS)", "seconds": round(t_fast_lin, 2),
         "test accuracy %": round(100 * fast_lin.accuracy, 2), "speed-up": f"{t_sk_lin / t_fast_lin:.1f}x",
         "agreement with sklearn": f"{(fast_lin.predictions == sk_lin.predictions).mean():.4f}"},
        {"probe": "k-NN k=5, sklearn KNeighborsClassifier", "seconds": round(t_sk_knn, 2),
         "test accuracy %": round(100 * (sk_knn == vy).mean(), 2), "speed-up": "1.0x", "agreement with sklearn": "-"},
        {"probe": "k-NN k=5, zoo knn_probe (torch)", "seconds": round(t_knn, 2),
         "test accuracy %": round(100 * knn.accuracy, 2), "speed-up": f"{t_sk_knn / t_knn:.1f}x",
         "agreement with sklearn": f"{(knn.predictions == sk_knn).mean():.4f}"},
        {"probe": "weighted k-NN k=200, T=0.07, cosine (zoo)", "seconds": round(t_wknn, 2),
         "test accuracy %": round(100 * wknn.accuracy, 2), "speed-up": "-", "agreement with sklearn": "-"},
    ]
    print(write_report("probes", "Probes on 50,000 x 512 train / 10,000 test features (random-init ResNet-18)",
                       probe_rows, "Command: `python benchmarks/probes.py`."))
    print(write_report("extraction", "Feature extraction, ResNet-18 CIFAR stem, 2,048 CIFAR-10 test images, batch 256",
                       extraction_rows(test.images[:2048]), "Command: `python benchmarks/probes.py`."))


if __name__ == "__main__":
    main()
