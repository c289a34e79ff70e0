"""An encoder on disk: ``config.json`` + ``model.safetensors`` (no pickle anywhere)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save
import torch
from torch import nn

from .data import atomic_write
from .encoders import EncoderConfig, build_encoder
from .transforms import Preprocess

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


def save_encoder(encoder: nn.Module, config: EncoderConfig, directory: str | os.PathLike, *,
                 info: dict[str, Any] | None = None, metadata: dict[str, str] | None = None) -> Path:
    """Write ``model.safetensors`` (the encoder's state dict only, string ``metadata`` in its
    header) and ``config.json`` (``{"encoder": config, **info}``), each atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    blob = save(tensors, metadata={k: str(v) for k, v in (metadata or {}).items()})
    atomic_write(directory / WEIGHTS_NAME, lambda f: f.write(blob))
    text = json.dumps({"encoder": config.to_dict(), **(info or {})}, indent=2) + "\n"
    atomic_write(directory / CONFIG_NAME, lambda f: f.write(text.encode()))
    return directory


def load_encoder(directory: str | os.PathLike, device: str = "cpu") -> nn.Module:
    """Rebuild the encoder from ``config.json`` and load ``model.safetensors`` with strict key checking.

    Returns it in eval mode with ``.config`` (EncoderConfig), ``.info`` (the rest of config.json)
    and ``.preprocess`` (the model's own preprocessing) attached.
    """
    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} not found: an encoder directory holds "
                                    f"{CONFIG_NAME} and {WEIGHTS_NAME}")
    info = json.loads((directory / CONFIG_NAME).read_text())
    if "encoder" not in info:
        raise ValueError(f"{directory / CONFIG_NAME} has no 'encoder' section")
    config = EncoderConfig.from_dict(info.pop("encoder"))
    with torch.device("meta"):  # no random init: every tensor comes from the file (assign=True below)
        encoder = build_encoder(config)
    state = load_file(directory / WEIGHTS_NAME, device=str(device))
    missing, unexpected = _key_mismatch(encoder, state)
    if missing or unexpected:
        raise ValueError(f"{directory / WEIGHTS_NAME} does not match architecture {config.architecture!r} "
                         f"{config.kwargs}: missing keys {missing[:10]}, unexpected keys {unexpected[:10]}"
                         f"{' (and more)' if max(len(missing), len(unexpected)) > 10 else ''}")
    try:
        encoder.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:  # same keys, different shapes
        raise ValueError(f"{directory / WEIGHTS_NAME} does not fit architecture {config.architecture!r} "
                         f"{config.kwargs}: {e}") from e
    if any(t.is_meta for t in [*encoder.parameters(), *encoder.buffers()]):
        raise ValueError(f"{config.architecture!r} has tensors that {WEIGHTS_NAME} does not hold")
    return ready(encoder, config, info, device)


def ready(encoder: nn.Module, config: EncoderConfig, info: dict[str, Any], device: str = "cpu") -> nn.Module:
    """Move to ``device``, set eval mode, attach ``.config``, ``.info`` and ``.preprocess``."""
    encoder.to(device).eval()
    encoder.config, encoder.info, encoder.preprocess = config, info, Preprocess(config)
    return encoder


def _key_mismatch(module: nn.Module, state: dict) -> tuple[list[str], list[str]]:
    expected = set(module.state_dict())
    return sorted(expected - set(state)), sorted(set(state) - expected)
