"""Training checkpoints (method with heads and target, optimiser, progress) in one safetensors file.

Tensors go in the file; the rest (epoch, history, optimiser hyperparameters) is JSON in its
string metadata, with a sha256 of all of it (tensors and metadata) that loading verifies.
Written atomically, so a crash leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from zoo.io import atomic_write, canonical_safetensors, remove_stale_temps

DIGEST_KEY = "content_sha256"


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted: unreadable, truncated, or its content changed after writing."""


def _content_sha256(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """sha256 over every tensor (name, dtype, shape, bytes) and metadata entry, in name order."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key]
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())
    for key in sorted(meta):
        digest.update(f"{key}|{meta[key]}\n".encode())
    return digest.hexdigest()


def save_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                    progress: dict[str, Any]) -> None:
    """Write model, optimiser and ``progress`` (JSON) to ``path`` atomically, with their content sha256."""
    opt_state = optimizer.state_dict()
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for idx, state in opt_state["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    meta = {"progress": json.dumps(progress), "param_groups": json.dumps(opt_state["param_groups"])}
    blob = canonical_safetensors(save(tensors, metadata={**meta, DIGEST_KEY: _content_sha256(tensors, meta)}))
    remove_stale_temps(path)  # a write killed earlier left its temporary file; this process owns the checkpoint
    atomic_write(path, lambda f: f.write(blob))


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and progress of a checkpoint, its checksum verified; ``CheckpointError`` names the
    file and what to do when it is unreadable, truncated or changed."""
    path = Path(path)
    advice = ("it cannot be resumed. Keep the run's other files, and train again with a new --out "
              "(or restore the checkpoint from a backup)")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint ({e}): {advice}") from e
    expected = meta.pop(DIGEST_KEY, None)
    if set(meta) != {"progress", "param_groups"}:
        raise CheckpointError(f"{path} is not an ssl-zoo training checkpoint (no progress record): {advice}")
    if expected is None:  # runs started before checksums were stored stay resumable
        print(f"warning: {path} has no checksum (written by an older ssl-zoo): resuming it unverified",
              file=sys.stderr)
    elif _content_sha256(tensors, meta) != expected:
        raise CheckpointError(f"{path} is corrupt (its content no longer matches the checksum written with it): "
                              f"{advice}")
    return tensors, {"progress": json.loads(meta["progress"]), "param_groups": json.loads(meta["param_groups"])}


def load_checkpoint(path: str | os.PathLike, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Restore model (strict) and optimiser (if given) in place from a verified checkpoint; return
    the saved progress dict."""
    tensors, saved = read_checkpoint(path)
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit this method and configuration ({e})") from e
    if optimizer is None:
        return saved["progress"]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    return saved["progress"]
