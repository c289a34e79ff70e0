"""Export an encoder to ONNX (dynamic batch axis) with its preprocessing and provenance in the file's
metadata, check it, verify it against torch; and the server's one export per set of weights."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from zoo.data import default_cache_dir
from zoo.io import atomic_write

if TYPE_CHECKING:
    import onnxruntime as ort

    from zoo.encoders import EncoderConfig
    from zoo.sources import Resolved

OPSET = 18
_PREFIX = "ssl_zoo."
# Keys that must agree for a file to be served as a model; the weights by sha256 when they have one.
_MUST_MATCH = ("input_size", "mean", "std", "feature_dim")


def model_metadata(config: EncoderConfig, provenance: dict[str, Any], feature_dim: int) -> dict[str, str]:
    """What an exported file records about its model: preprocessing, output size and which weights."""
    return {"input_size": str(config.input_size), "mean": json.dumps(config.mean), "std": json.dumps(config.std),
            "feature_dim": str(feature_dim), "model": str(provenance.get("name") or provenance.get("source") or ""),
            "revision": str(provenance.get("revision") or ""), "sha256": str(provenance.get("sha256") or "")}


def export_onnx(encoder: nn.Module, path: str | os.PathLike, opset: int = OPSET) -> Path:
    """Write ``encoder`` (a ``zoo.Encoder``) as ONNX with input ``images`` (batch, 3, S, S), output
    ``features`` and its ``model_metadata`` under ``ssl_zoo.*`` keys (torch's dynamo-based exporter);
    ``onnx.checker`` runs before the file is written, atomically."""
    import onnx

    path = Path(path)
    encoder = encoder.eval()
    size = encoder.config.input_size
    program = torch.onnx.export(encoder, (torch.rand(2, 3, size, size),), dynamo=True, opset_version=opset,
                                input_names=["images"], output_names=["features"],
                                dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, verbose=False)
    model = program.model_proto
    for key, value in model_metadata(encoder.config, encoder.info, encoder.feature_dim).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = _PREFIX + key, value
    onnx.checker.check_model(model, full_check=True)
    atomic_write(path, lambda f: f.write(model.SerializeToString()))
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``ssl_zoo.*`` metadata of an exported file (prefix removed)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key[len(_PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(_PREFIX)}


def check_metadata(path: str | os.PathLike, expected: dict[str, str]) -> None:
    """Refuse a file whose metadata does not match ``expected`` (``model_metadata`` of the model served)."""
    got = read_metadata(path)
    keys = _MUST_MATCH + (("sha256",) if expected.get("sha256") else ("model",))
    wrong = [f"{k}: the file has {got.get(k, '(nothing)')!r}, the model {expected[k]!r}" for k in keys
             if got.get(k) != expected[k]]
    if wrong:
        raise ValueError(f"{path} was not exported from this model ({'; '.join(wrong)}); export it again with "
                         "`ssl-zoo export-onnx MODEL -o FILE`")


def cached_export(resolved: Resolved, feature_dim: int) -> Path:
    """The ONNX file of a resolved model (``zoo.fetch``), exported once per set of weights, torch version
    and opset into ``$SSL_ZOO_CACHE/onnx`` (a stale or foreign file there is exported again)."""
    expected = model_metadata(resolved.config, resolved.provenance, feature_dim)
    identity = {"weights": expected["sha256"] or [resolved.config.to_dict(), resolved.build_seed, expected["model"]],
                "torch": torch.__version__, "opset": OPSET}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    path = default_cache_dir() / "onnx" / f"{key}.onnx"
    if path.is_file():
        try:
            check_metadata(path, expected)
            return path
        except Exception:  # unreadable or not this model's: export again over it
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    return export_onnx(resolved.load("cpu"), path)


def onnx_session(path: str | os.PathLike, threads: int | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session with all graph optimisations and ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def max_abs_diff(encoder: nn.Module, session: ort.InferenceSession, images: torch.Tensor) -> float:
    """Largest |torch - onnxruntime| over the features of ``images`` (float N, 3, S, S)."""
    with torch.inference_mode():
        expected = encoder.eval()(images).numpy()
    got = session.run(None, {"images": images.numpy()})[0]
    return float(np.abs(got - expected).max())
