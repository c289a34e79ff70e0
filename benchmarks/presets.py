"""The three CPU presets and the random-init control, in one run, same evaluation protocol.

    python benchmarks/presets.py [--preset quick]

Each method trains with ``ssl-zoo train <method> --preset quick``; the control is the same
architecture (width-16 CIFAR ResNet-18) at random init. All are probed identically: k-NN (k=5),
weighted k-NN (k=200, T=0.07, cosine) and the linear probe, train bank of the preset's
``final_train_per_class`` images per class, the full 10,000-image test set.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from report import write_report
from training.config import build_config
from training.loop import build_method, train
from zoo import load_cifar10
from zoo.eval.probes import evaluate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="quick")
    args = parser.parse_args()
    rows = []
    control_cfg = build_config("simclr", args.preset, None, {})
    torch.manual_seed(control_cfg.seed)
    encoder = build_method(control_cfg)[0].encoder
    train_set, test_set = load_cifar10("train"), load_cifar10("test")
    bank = train_set.per_class(control_cfg.final_train_per_class) if control_cfg.final_train_per_class else train_set
    control = evaluate(encoder, bank, test_set)
    for method in ("simclr", "byol", "barlowtwins"):
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            result = train(build_config(method, args.preset, None, {}), out)
        rows.append({"method": method, "train minutes": round((time.perf_counter() - start) / 60, 1),
                     "k-NN k=5 %": round(100 * result["knn5"], 2),
                     "weighted k-NN k=200 %": round(100 * result["knn200"], 2),
                     "linear %": round(100 * result["linear"], 2),
                     "k-NN k=5 margin over random init (points)": round(100 * (result["knn5"] - control["knn5"]), 2)})
    rows.append({"method": "random init (control)", "train minutes": 0, "k-NN k=5 %": round(100 * control["knn5"], 2),
                 "weighted k-NN k=200 %": round(100 * control["knn200"], 2), "linear %": round(100 * control["linear"], 2),
                 "k-NN k=5 margin over random init (points)": 0.0})
    cfg = control_cfg
    print(write_report(f"presets-{args.preset}", f"Preset `{args.preset}` on 2 CPU cores: width-{cfg.width} CIFAR "
                       f"ResNet-18, {cfg.train_per_class} images/class, {cfg.epochs} epochs, batch {cfg.batch_size}",
                       rows, f"Probes: train bank {len(bank)} images, full test set. "
                       f"Command: `python benchmarks/presets.py --preset {args.preset}`."))


if __name__ == "__main__":
    main()
