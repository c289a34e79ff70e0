"""How far the label-free RankMe orders encoders as weighted k-NN accuracy does, on CIFAR-10: every encoder
given (CPU-study run directories, the zoo's bundled models) measured on one protocol, then Spearman's rank
correlation over all of them, within each method, and within each run over its epochs (metrics.jsonl of runs
that recorded RankMe).

    python benchmarks/rankme_vs_knn.py ~/ssl-zoo-runs/study2/* simclr-cifar10.cpu byol-cifar10.cpu ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))

import zoo  # noqa: E402
from report import write_report  # noqa: E402
from zoo.eval.labelfree import rankme  # noqa: E402
from zoo.eval.probes import evaluate, extract_features  # noqa: E402

BANK, TEST, SAMPLE = 500, 200, 2048  # per class; per class; RankMe images (the training monitor's sizes)


def measure(spec: str, bank: zoo.ImageArrays, test: zoo.ImageArrays, sample: np.ndarray) -> dict:
    """One encoder's weighted k-NN (k=200, T=0.1) and RankMe on the fixed CIFAR-10 subsets."""
    encoder = zoo.load(spec if not Path(spec).is_dir() else f"local-dir:{spec}")
    probes = evaluate(encoder, bank, test, knn=False, linear=False)
    info = encoder.info
    return {"encoder": Path(spec).name if Path(spec).is_dir() else spec, "method": info.get("method", "?"),
            "weighted_knn": round(100 * probes["knn200"], 2),
            "rankme": round(rankme(extract_features(encoder, sample, progress=False)), 2)}


def within_runs(paths: list[str]) -> list[dict]:
    """Spearman over the epochs of each run whose metrics.jsonl records RankMe and the k-NN monitor."""
    rows = []
    for path in paths:
        metrics = Path(path) / "metrics.jsonl"
        history = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
        history = [r for r in history if "rankme" in r and "weighted_knn_accuracy" in r]
        if len(history) >= 4:
            rho = spearmanr([r["rankme"] for r in history], [r["weighted_knn_accuracy"] for r in history])[0]
            rows.append({"run": Path(path).name, "epochs": len(history), "spearman": round(float(rho), 3)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("encoders", nargs="+", help="run directories with an exported encoder, or zoo names")
    args = parser.parse_args()
    train, test = zoo.load_cifar10("train"), zoo.load_cifar10("test")
    sample = train.images[np.random.default_rng(0).permutation(len(train))[:SAMPLE]]
    usable = [e for e in args.encoders if (Path(e) / "model.safetensors").is_file() or not Path(e).exists()]
    rows = [measure(spec, train.per_class(BANK), test.per_class(TEST), sample) for spec in usable]
    rows.sort(key=lambda r: -r["weighted_knn"])
    knn, rank = [r["weighted_knn"] for r in rows], [r["rankme"] for r in rows]
    summary = [{"group": "all encoders", "encoders": len(rows), "spearman": round(float(spearmanr(rank, knn)[0]), 3)}]
    for method in sorted({r["method"] for r in rows}):
        group = [r for r in rows if r["method"] == method]
        if len(group) >= 3:
            rho = spearmanr([r["rankme"] for r in group], [r["weighted_knn"] for r in group])[0]
            summary.append({"group": f"{method} only", "encoders": len(group), "spearman": round(float(rho), 3)})
    notes = (f"Weighted k-NN (k=200, T=0.1, cosine, L2-normalised) with a bank of {BANK} and {TEST} test images per "
             f"class; RankMe of the raw features of {SAMPLE} CIFAR-10 training images (seed 0), eval mode. The rows "
             f"'epochs of RUN' take both from that run's own per-epoch monitor (its metrics.jsonl).")
    print(write_report("rankme_vs_knn", "RankMe against weighted k-NN, per encoder", rows, notes))
    print(write_report("rankme_vs_knn_spearman", "Spearman correlation of RankMe with weighted k-NN",
                       summary + [{"group": f"epochs of {r['run']}", "encoders": r["epochs"], "spearman": r["spearman"]}
                                  for r in within_runs(usable)], notes))


if __name__ == "__main__":
    main()
