"""``Encoder``: a backbone with its config, preprocessing and feature dimension, saved as
``config.json`` + ``model.safetensors`` (the Hub layout of huggingface_hub's ModelHubMixin).

Not built on ``PyTorchModelHubMixin``: its loader defaults to ``strict=False``, saves the wrapper's
keys (``backbone.*``) and cannot check a pinned sha256; here the file holds the backbone's own keys,
every load is strict and validated (keys, shapes, dtypes, config fields), and sources are resolved
and verified by ``zoo.hub.sources`` (``zoo.load``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save
from torch import nn

from . import __version__
from .encoders import EncoderConfig, build_encoder
from .io import CONFIG_NAME, WEIGHTS_NAME, canonical_safetensors, write_bytes, write_json
from .transforms import Preprocess, images_to_array


class Encoder(nn.Module):
    """A frozen-feature image encoder: ``encoder(x)`` -> ``(N, feature_dim)`` for a preprocessed batch."""

    def __init__(self, config: EncoderConfig, backbone: nn.Module | None = None,
                 info: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone if backbone is not None else build_encoder(config)
        self.feature_dim: int = int(self.backbone.feature_dim)
        self.preprocess = Preprocess(config)
        self.info: dict[str, Any] = dict(info or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(N, feature_dim)`` of a preprocessed float batch ``(N, 3, S, S)``."""
        return self.backbone(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map before pooling, ``(N, feature_dim, h, w)`` (timm's ``forward_features``)."""
        return self.backbone.forward_features(x)

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """The preprocessing a pipeline must apply, in timm's ``pretrained_cfg`` terms."""
        size = self.config.input_size
        return {"input_size": (3, size, size), "interpolation": "bilinear", "crop_pct": 1.0,
                "crop_mode": "center", "mean": self.config.mean, "std": self.config.std,
                "num_features": self.feature_dim, "resize": "short side to input size, then center crop"}

    @torch.inference_mode()
    def embed(self, images: Any, *, normalize: bool = False, batch_size: int = 256) -> torch.Tensor:
        """Features ``(N, feature_dim)`` of one image or many: paths, bytes, PIL images, uint8 HWC
        arrays/tensors, float NCHW tensors in [0, 1], or a list of any of these."""
        batch = images_to_array(images, self.config.input_size)
        device = next(self.backbone.parameters()).device
        was_training = self.training
        self.eval()
        try:
            out = [self(self.preprocess(batch[i:i + batch_size]).to(device)).float().cpu()
                   for i in range(0, len(batch), batch_size)]
        finally:
            self.train(was_training)
        feats = torch.cat(out)
        return F.normalize(feats, dim=1) if normalize else feats

    def save_pretrained(self, directory: str | os.PathLike, *, info: dict[str, Any] | None = None) -> Path:
        """Write ``model.safetensors`` (the backbone's state dict, nothing else) and ``config.json``
        (``{"encoder": config, **info}``), each atomically; return the directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.backbone.state_dict().items()}
        info = self.info if info is None else info
        metadata = {"format": "pt", "architecture": self.config.architecture, "ssl_zoo_version": __version__,
                    **{k: str(info[k]) for k in ("method", "dataset", "epochs") if k in info}}
        write_bytes(directory / WEIGHTS_NAME, canonical_safetensors(save(tensors, metadata=metadata)))
        write_json(directory / CONFIG_NAME, {"encoder": self.config.to_dict(), **info})
        return directory

    @classmethod
    def from_directory(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> Encoder:
        """Build from a local ``config.json`` + ``model.safetensors``, loading strictly and validating
        keys, shapes, dtypes and finiteness; eval mode on ``device``."""
        config, info = read_config(directory)
        return cls.from_weights(Path(directory) / WEIGHTS_NAME, config, info, device)

    @classmethod
    def from_weights(cls, path: str | os.PathLike, config: EncoderConfig, info: dict[str, Any] | None = None,
                     device: str | torch.device = "cpu") -> Encoder:
        """Build ``config``'s encoder from the weights file ``path`` (config.json already read), loading
        strictly and validating keys, shapes, dtypes and finiteness; eval mode on ``device``."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: an encoder directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
        try:
            state = load_file(path, device=str(device))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{path} is not a readable safetensors file ({e}); download or copy it again") from e
        return cls._from_state(state, path, config, info, device)

    @classmethod
    def from_bytes(cls, data: bytes, config: EncoderConfig, info: dict[str, Any] | None = None,
                   device: str | torch.device = "cpu", name: str = WEIGHTS_NAME) -> Encoder:
        """``from_weights`` of a weights file's bytes, already read (and verified by the caller)."""
        try:
            state = load(data)
        except (SafetensorError, ValueError) as e:
            raise ValueError(f"{name} is not a readable safetensors file ({e}); download or copy it again") from e
        return cls._from_state({k: v.to(device) for k, v in state.items()}, Path(name), config, info, device)

    @classmethod
    def _from_state(cls, state: dict[str, torch.Tensor], path: Path, config: EncoderConfig,
                    info: dict[str, Any] | None, device: str | torch.device) -> Encoder:
        with torch.device("meta"):  # no random init: every tensor comes from the file
            encoder = cls(config, info=info)
        _check_state(encoder.backbone, state, path, config)
        encoder.backbone.load_state_dict(state, strict=True, assign=True)
        return encoder.to(device).eval()


def read_config(directory: str | os.PathLike) -> tuple[EncoderConfig, dict[str, Any]]:
    """The validated ``EncoderConfig`` and the rest of ``config.json`` in ``directory``."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: an encoder directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        info = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e
    except RecursionError:
        raise ValueError(f"{path} is nested too deeply to be an encoder config") from None
    if not isinstance(info, dict) or not isinstance(info.get("encoder"), dict):
        raise ValueError(f"{path} must be a JSON object with an 'encoder' object (architecture, kwargs, input_size, "
                         f"mean, std); got {type(info).__name__}")
    try:
        config = EncoderConfig.from_dict(info.pop("encoder"))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e
    return config, info


def _check_state(backbone: nn.Module, state: dict[str, torch.Tensor], path: Path, config: EncoderConfig) -> None:
    expected = backbone.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        more = " (and more)" if max(len(missing), len(unexpected)) > 10 else ""
        raise ValueError(f"{path} does not match architecture {config.architecture!r} {config.kwargs}: missing keys "
                         f"{missing[:10]}, unexpected keys {unexpected[:10]}{more}")
    for key, want in expected.items():
        got = state[key]
        if got.shape != want.shape:
            raise ValueError(f"{path} does not fit architecture {config.architecture!r} {config.kwargs}: {key} has "
                             f"shape {tuple(got.shape)}, the architecture needs {tuple(want.shape)}")
        if got.dtype != want.dtype:
            raise ValueError(f"{path}: {key} is {got.dtype}, the architecture needs {want.dtype}; save the weights "
                             f"in {want.dtype}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise ValueError(f"{path}: {key} holds NaN or infinite values; the file is corrupt")


def embed(encoder: Encoder, images: Any, *, normalize: bool = False, batch_size: int = 256) -> torch.Tensor:
    """``encoder.embed(images)``: features of one image or many, with the encoder's own preprocessing."""
    return encoder.embed(images, normalize=normalize, batch_size=batch_size)


