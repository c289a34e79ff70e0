"""torch eager vs onnxruntime fp32 vs onnxruntime int8, on every bundled model (and a full-width random
network), with what int8 costs in weighted k-NN.

    python benchmarks/onnx_speed.py [--rounds 5] [--full-protocol]

Speed: images/s at batch 1 and 64 on preprocessed CIFAR-10 test images, the backends alternating
within each round; the table gives the median, the speed-up's minimum over rounds beside it.
Accuracy: the int8 guardrail's own measure (``zoo.quantize.compare``: weighted k-NN, k=200, T=0.1,
L2-normalised; 5,000 bank and 1,000 test images, or the model-card protocol with --full-protocol).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from report import write_report
from serving_common import jpegs, model_dir

import zoo
from serving.decode import decode_image
from zoo.hub.registry import resolve
from zoo.onnx import export_onnx, onnx_session
from zoo.quantize import SETTINGS, quantize_int8

BUNDLED = ("simclr-cifar10", "byol-cifar10", "barlowtwins-cifar10")
GOAL_SPEEDUP, GOAL_DROP = 1.5, 0.5


def speeds(encoder: torch.nn.Module, fp32: Path, int8: Path, images: torch.Tensor, batch: int,
           rounds: int) -> dict[str, list[float]]:
    """images/s of each backend per round, alternating within each round."""
    sessions = {name: onnx_session(path) for name, path in (("onnx fp32", fp32), ("onnx int8", int8))}
    backends = {"torch eager": lambda x: encoder(x),
                **{name: (lambda x, s=s: s.run(None, {"images": x.numpy()})) for name, s in sessions.items()}}
    x, reps = images[:batch], max(3, 512 // batch)
    rates: dict[str, list[float]] = {name: [] for name in backends}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, run in backends.items():
                run(x)
                start = time.perf_counter()
                for _ in range(reps):
                    run(x)
                rates[name].append(reps * batch / (time.perf_counter() - start))
    return rates


def model_rows(name: str, encoder: torch.nn.Module, images: np.ndarray, rounds: int, full_protocol: bool) -> list[dict]:
    """One model's rows: each batch size's speeds and speed-ups, and int8's accuracy cost."""
    with tempfile.TemporaryDirectory(prefix="ssl-zoo-onnx-bench-") as tmp:
        fp32 = export_onnx(encoder, Path(tmp) / "fp32.onnx")
        int8 = Path(tmp) / "int8.onnx"
        accuracy = quantize_int8(fp32, int8, encoder, max_drop=100, full_protocol=full_protocol)  # whatever it loses
        x = encoder.preprocess(images)
        rows = []
        for batch in (1, 64):
            rates = speeds(encoder, fp32, int8, x, batch, rounds)
            base = rates["torch eager"]
            speedup = {k: [r / b for r, b in zip(v, base)] for k, v in rates.items()}
            drop = 100 * (accuracy["knn200_fp32"] - accuracy["knn200_int8"])
            rows.append({"model": name, "batch": batch,
                         **{f"{k} images/s": round(statistics.median(v), 1) for k, v in rates.items()},
                         "int8 / torch (median, min)": f"{statistics.median(speedup['onnx int8']):.2f}x, "
                                                       f"{min(speedup['onnx int8']):.2f}x",
                         "fp32 / torch (median)": f"{statistics.median(speedup['onnx fp32']):.2f}x",
                         "weighted k-NN fp32 -> int8": f"{100 * accuracy['knn200_fp32']:.2f} -> "
                                                       f"{100 * accuracy['knn200_int8']:.2f} % ({-drop:+.2f})"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--full-protocol", action="store_true", help="accuracy on 50,000 / 10,000 images")
    args = parser.parse_args()
    images = np.stack([decode_image(b, 32) for b in jpegs(256)])
    models = {resolve(name).full_name: zoo.load(name) for name in BUNDLED}  # the tag says whose accuracy it is
    models["random init, full width (64)"] = zoo.load(str(model_dir(64)))
    rows = [row for name, encoder in models.items()
            for row in model_rows(name, encoder, images, args.rounds, args.full_protocol)]
    at64 = [r for r in rows if r["batch"] == 64 and r["model"].partition(".")[0] in BUNDLED]
    worst = min(float(r["int8 / torch (median, min)"].split("x")[0]) for r in at64)
    protocol = "50,000 bank / 10,000 test images" if args.full_protocol else "5,000 bank / 1,000 test images"
    print(write_report("onnx", "torch eager vs onnxruntime fp32 and int8, CIFAR ResNet-18 encoders, CPU", rows,
                       f"int8: onnxruntime static quantisation, {SETTINGS['format']}, {SETTINGS['weights']} weights, "
                       f"{SETTINGS['activations']} activations, {SETTINGS['calibration']}; weighted k-NN (k=200, "
                       f"T=0.1, L2-normalised) on {protocol}. Goal at batch 64 on every bundled model: int8 >= "
                       f"{GOAL_SPEEDUP}x torch eager with <= {GOAL_DROP} points lost; the least speed-up over the "
                       f"bundled models at batch 64 is **{worst:.2f}x** (median over {args.rounds} rounds). Session "
                       "options: ORT_ENABLE_ALL, intra-op threads = torch threads, sequential execution, "
                       "CPUExecutionProvider, opset 18. Command: `python benchmarks/onnx_speed.py`."))


if __name__ == "__main__":
    main()
