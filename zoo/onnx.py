"""The one ONNX path of ssl-zoo: export an encoder (dynamic batch axis) with its preprocessing and provenance
in the file's metadata, check the file against the model, cache one export per set of weights, open an
onnxruntime session and verify it against torch. ``ssl-zoo export-onnx``, ``serve --backend onnx`` and
``embed --backend onnx`` all run the graph made here."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .data import default_cache_dir
from .io import atomic_write

if TYPE_CHECKING:
    import onnxruntime as ort

    from .encoders import EncoderConfig
    from .model import Encoder

OPSET = 18
TOLERANCE = 1e-4  # largest |torch - onnxruntime| accepted on a feature, for images in [0, 1]
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


def cached_export(config: EncoderConfig, provenance: dict[str, Any], feature_dim: int,
                  build: Callable[[], Encoder]) -> Path:
    """The ONNX file of a model (its config, provenance and output size), exported from ``build()`` once per
    set of weights (their sha256, else the registry name that builds them), torch version and opset into
    ``$SSL_ZOO_CACHE/onnx``; a stale or foreign file there is exported again. ``build`` runs only then."""
    expected = model_metadata(config, provenance, feature_dim)
    if not (expected["sha256"] or expected["model"]):
        raise ValueError("an encoder with neither a weights sha256 nor a name cannot be cached: export it with "
                         "export_onnx")
    identity = {"weights": expected["sha256"] or [config.to_dict(), expected["model"]], "torch": torch.__version__,
                "opset": OPSET}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    path = default_cache_dir() / "onnx" / f"{key}.onnx"
    if path.is_file():
        try:
            check_metadata(path, expected)
            return path
        except Exception:  # unreadable or not this model's: export again over it
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    return export_onnx(build(), path)


def encoder_session(encoder: Encoder, threads: int | None = None) -> ort.InferenceSession:
    """An onnxruntime session running ``encoder``'s graph (cached export when the encoder has a sha256 or a
    name, else a one-off export), refused unless it agrees with torch within TOLERANCE."""
    info = encoder.info
    if info.get("sha256") or info.get("name") or info.get("source"):
        session = onnx_session(cached_export(encoder.config, info, encoder.feature_dim, lambda: encoder), threads)
    else:
        with tempfile.TemporaryDirectory(prefix="ssl-zoo-onnx-") as tmp:
            session = onnx_session(export_onnx(encoder, Path(tmp) / "encoder.onnx"), threads)
    check_parity(encoder, session)
    return session


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


def check_parity(encoder: Encoder, session: ort.InferenceSession, images: torch.Tensor | None = None) -> float:
    """``max_abs_diff`` on ``images`` (default: 8 seeded random images of the encoder's input size);
    raises when it exceeds TOLERANCE, and returns it."""
    if images is None:
        size = encoder.config.input_size
        images = encoder.preprocess(torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(0)))
    diff = max_abs_diff(encoder, session, images)
    if diff > TOLERANCE:
        raise RuntimeError(f"the ONNX graph of this encoder differs from torch by {diff:.2e} (> {TOLERANCE}); use "
                           "the torch backend")
    return diff
