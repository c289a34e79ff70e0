"""int8 ONNX with an accuracy guardrail: onnxruntime's static quantisation, calibrated on CIFAR-10 training
images, then measured against the fp32 graph with the model-card probe before it is used.

Quantisation is only worth what it keeps: both graphs' features go through the same weighted k-NN
(k=200, T=0.1, L2-normalised; the registry's check subset of 5,000 bank and 1,000 test images, or the
full protocol on request), both numbers go into the int8 file's metadata, and a graph that loses more
than ``max_drop`` points is refused, never written.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import default_cache_dir, load_cifar10
from .eval.probes import knn_probe
from .io import atomic_write
from .onnx import (
    OPSET,
    cached_export,
    check_metadata,
    model_metadata,
    onnx_session,
    read_metadata,
)

CALIBRATION_IMAGES = 512  # CIFAR-10 training images (the first per class) the activation ranges come from
CHECK_PER_CLASS = (500, 100)  # bank and test images per class of the guardrail's probe (the registry's check subset)
MAX_DROP = 0.5  # points of weighted k-NN the int8 graph may lose
CARD_START, CARD_END = "<!-- ssl-zoo:int8 -->", "<!-- /ssl-zoo:int8 -->"
SETTINGS = {"format": "QDQ", "weights": "int8 per-channel", "activations": "uint8 per-tensor",
            "calibration": f"min-max over {CALIBRATION_IMAGES} CIFAR-10 training images"}


def quantize_int8(fp32: str | Path, out: str | Path, encoder: torch.nn.Module, *, max_drop: float = MAX_DROP,
                  full_protocol: bool = False, data: str | None = None) -> dict[str, Any]:
    """Write the int8 graph of the fp32 ONNX file ``fp32`` (``encoder``'s export) to ``out``, after checking it:
    weighted k-NN of both graphs on the guardrail's probe. Raises ``ValueError`` (``out`` untouched) when int8
    loses more than ``max_drop`` points. Returns both numbers and the probe's protocol."""
    from onnxruntime.quantization import (
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    if not max_drop >= 0:
        raise ValueError(f"--max-accuracy-drop must be >= 0 points of weighted k-NN, got {max_drop}: e.g. 0.5")
    train = load_cifar10("train", data)
    with tempfile.TemporaryDirectory(prefix="ssl-zoo-int8-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(str(prepared), str(quantized), _Calibration(encoder, train.per_class(CALIBRATION_IMAGES // 10)
                                                                    .images), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
        report = compare(fp32, quantized, encoder, full_protocol=full_protocol, data=data)
        drop = 100 * (report["knn200_fp32"] - report["knn200_int8"])
        if drop > max_drop:
            raise ValueError(f"the int8 graph loses {drop:.2f} points of weighted k-NN ({100 * report['knn200_fp32']:.2f} "
                             f"-> {100 * report['knn200_int8']:.2f} %), over the allowed {max_drop:g}: not written; "
                             "serve the fp32 graph (--backend onnx), or allow more with --max-accuracy-drop")
        import onnx

        model = onnx.load(str(quantized))
        props = {**read_metadata(fp32), "quantization": json.dumps(SETTINGS), "knn200_fp32": str(report["knn200_fp32"]),
                 "knn200_int8": str(report["knn200_int8"]), "probe": json.dumps(report["protocol"])}
        del model.metadata_props[:]
        for key, value in props.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = f"ssl_zoo.{key}", value
        atomic_write(out, lambda f: f.write(model.SerializeToString()))
    return report


def record_in_card(card: str | Path, report: dict[str, Any]) -> None:
    """Write the guardrail's numbers into a model card (``README.md``) as its "int8 ONNX" section, before
    "Limitations" (or replacing the section a previous export wrote); atomically."""
    card = Path(card)
    protocol = report["protocol"]
    section = (f"{CARD_START}\n## int8 ONNX\n\n`ssl-zoo export-onnx MODEL -o model.int8.onnx --quantize int8` (or "
               "`ssl-zoo serve MODEL --backend onnx-int8`): onnxruntime static quantisation, "
               f"{SETTINGS['weights']} weights, {SETTINGS['activations']} activations, {SETTINGS['calibration']}. "
               f"Weighted k-NN (k=200, T=0.1, L2-normalised; {protocol['train_images']:,} bank and "
               f"{protocol['test_images']:,} test images):\n\n| graph | weighted k-NN |\n|---|---|\n"
               f"| fp32 | {100 * report['knn200_fp32']:.2f} % |\n| int8 | {100 * report['knn200_int8']:.2f} % |\n"
               f"{CARD_END}\n\n")
    text = card.read_text()
    if CARD_START in text and CARD_END in text:
        head, rest = text.split(CARD_START, 1)
        text = head + section.rstrip("\n") + rest.split(CARD_END, 1)[1]
    elif "## Limitations" in text:
        head, rest = text.split("## Limitations", 1)
        text = head + section + "## Limitations" + rest
    else:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    atomic_write(card, lambda f: f.write(text.encode()))


def compare(fp32: str | Path, int8: str | Path, encoder: torch.nn.Module, *, full_protocol: bool = False,
            data: str | None = None) -> dict[str, Any]:
    """Weighted k-NN (k=200, T=0.1, L2-normalised) of the features of both graphs: on the check subset, or on
    the model-card protocol's 50,000 bank and 10,000 test images with ``full_protocol``."""
    train, test = load_cifar10("train", data), load_cifar10("test", data)
    if not full_protocol:
        train, test = train.per_class(CHECK_PER_CLASS[0]), test.per_class(CHECK_PER_CLASS[1])
    result = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        session = onnx_session(path)
        bank, queries = (_features(session, encoder, split.images) for split in (train, test))
        result[f"knn200_{name}"] = knn_probe(bank, train.labels, queries, test.labels, k=200, weighted=True,
                                             normalize=True).accuracy
    result["protocol"] = {"probe": "weighted k-NN", "k": 200, "temperature": 0.1, "features_normalized": True,
                          "train_images": len(train), "test_images": len(test)}
    return result


def cached_int8(fp32: Path, config: Any, provenance: dict[str, Any], feature_dim: int,
                build: Callable[[], torch.nn.Module]) -> Path:
    """The int8 graph of a cached fp32 export, quantised and checked once (``quantize_int8``) into
    ``$SSL_ZOO_CACHE/onnx``; a file there without its guardrail's numbers is made again."""
    path = default_cache_dir() / "onnx" / f"{fp32.stem}.int8-{OPSET}.onnx"
    if path.is_file():
        try:
            check_metadata(path, model_metadata(config, provenance, feature_dim))
            if "knn200_int8" in read_metadata(path):
                return path
        except Exception:  # unreadable or not this model's: quantise again over it
            pass
    quantize_int8(fp32, path, build())
    return path


def int8_session(encoder: torch.nn.Module, threads: int | None = None) -> Any:
    """An onnxruntime session running ``encoder``'s int8 graph (``cached_int8``: checked once by the guardrail)."""
    info = encoder.info
    if not (info.get("sha256") or info.get("name") or info.get("source")):
        raise ValueError("the int8 graph is made for a saved model (a name, a Hub repo or a folder): save the "
                         "encoder first, or use the fp32 graph (--backend onnx)")
    fp32 = cached_export(encoder.config, info, encoder.feature_dim, lambda: encoder)
    return onnx_session(cached_int8(fp32, encoder.config, info, encoder.feature_dim, lambda: encoder), threads)


class _Calibration:
    """onnxruntime's ``CalibrationDataReader`` over uint8 images, preprocessed as the encoder does, 64 at a time."""

    def __init__(self, encoder: torch.nn.Module, images: np.ndarray) -> None:
        self.batches = iter([encoder.preprocess(images[i:i + 64]).numpy() for i in range(0, len(images), 64)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {"images": batch}


def _features(session: Any, encoder: torch.nn.Module, images: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([session.run(None, {"images": encoder.preprocess(images[i:i + batch]).numpy()})[0]
                           for i in range(0, len(images), batch)])
