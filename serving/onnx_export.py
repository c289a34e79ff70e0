"""Export an encoder to ONNX (dynamic batch axis), check it, and verify it against torch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

OPSET = 18


def export_onnx(encoder: nn.Module, path: str | os.PathLike, input_size: int = 32, opset: int = OPSET) -> Path:
    """Write ``encoder`` as ONNX with input ``images`` (batch, 3, S, S) and output ``features``
    (torch's current dynamo-based exporter), then run ``onnx.checker`` on it."""
    import onnx

    path = Path(path)
    encoder = encoder.eval()
    example = torch.rand(2, 3, input_size, input_size)
    program = torch.onnx.export(encoder, (example,), dynamo=True, opset_version=opset, input_names=["images"],
                                output_names=["features"], dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                                verbose=False)
    tmp = path.with_name(f".{path.name}.tmp")
    program.save(str(tmp))
    onnx.checker.check_model(onnx.load(str(tmp)), full_check=True)
    os.replace(tmp, path)
    return path


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session with all graph optimisations and ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def max_abs_diff(encoder: nn.Module, session, images: torch.Tensor) -> float:
    """Largest |torch - onnxruntime| over the features of ``images`` (float N, 3, S, S)."""
    with torch.inference_mode():
        expected = encoder.eval()(images).numpy()
    got = session.run(None, {"images": images.numpy()})[0]
    return float(np.abs(got - expected).max())
