"""Where a model comes from, spelled explicitly (timm-style), and ``load``.

- ``byol-cifar10`` or ``byol-cifar10.cpu``: the registry (pinned sha256 of every file);
- ``hf-hub:owner/repo[@revision]``: a Hub repo (plain ``owner/repo[@revision]`` too, when no local
  folder could be meant);
- ``./dir``, ``../dir``, ``/abs/dir``, ``~/dir`` or ``local-dir:dir``: a local folder.

An ambiguous spelling raises and says how to disambiguate; nothing is guessed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..encoders import EncoderConfig
from ..io import WEIGHTS_NAME
from ..model import Encoder, read_config
from .download import Digests, HashMismatchError, download, verify
from .registry import resolve

HUB_PREFIX, LOCAL_PREFIX = "hf-hub:", "local-dir:"
_PATH_STARTS = ("./", "../", "/", "~")


@dataclass(frozen=True)
class Source:
    """A parsed model source: ``kind`` is ``registry``, ``hub`` or ``local``."""

    kind: str
    value: str
    revision: str | None = None


def parse_source(spec: str | os.PathLike) -> Source:
    """Parse a model spelling; raise ValueError for an ambiguous or malformed one."""
    if isinstance(spec, os.PathLike):
        return Source("local", os.fspath(spec))
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a model source must be a non-empty string, got {spec!r}")
    if spec.startswith(LOCAL_PREFIX):
        return Source("local", spec[len(LOCAL_PREFIX):])
    if spec.startswith(_PATH_STARTS) or spec in (".", ".."):
        return Source("local", spec)
    if spec.startswith(HUB_PREFIX):
        return _hub_source(spec[len(HUB_PREFIX):], spec)
    if "/" in spec:
        local = spec.partition("@")[0].split("/")[0]
        if Path(local).is_dir():
            raise ValueError(f"{spec!r} is ambiguous: a local folder {local!r} exists here. Write ./{spec} (or "
                             f"local-dir:{spec}) for a folder, or {HUB_PREFIX}{spec} for the Hub repo.")
        return _hub_source(spec, spec)
    if Path(spec).is_dir():
        try:
            resolve(spec)
        except LookupError:
            raise ValueError(f"{spec!r} is not a registry name, but a folder of that name exists here: write "
                             f"./{spec} (or local-dir:{spec}) to load the folder") from None
    return Source("registry", spec)


def _hub_source(text: str, spec: str) -> Source:
    repo, _, revision = text.partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"{spec!r}: a Hub repo is written owner/name[@revision]")
    return Source("hub", repo, revision or None)


@dataclass(frozen=True)
class Resolved:
    """A source made local and verified: its folder (or a seed to build from), config and provenance."""

    config: EncoderConfig
    provenance: dict[str, Any]
    folder: Path | None = None
    build_seed: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def load(self, device: str | torch.device = "cpu", verify: bool = False) -> Encoder:
        """Build the encoder (strict, validated), in eval mode on ``device``. With ``verify`` (a server's
        worker, built long after ``fetch``), the weights are read once, refused unless their sha256 is the
        one ``fetch`` recorded, and built from exactly those bytes."""
        if self.folder is None:
            with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
                torch.manual_seed(self.build_seed)
                encoder = Encoder(self.config, info=self.info)
            encoder = encoder.to(device).eval()
        elif verify:
            path = self.folder / WEIGHTS_NAME
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != self.provenance["sha256"]:
                raise HashMismatchError(f"{path} changed since it was verified (sha256 {self.provenance['sha256']}): "
                                        "refusing to load other weights; restore the file or restart with the model")
            encoder = Encoder.from_bytes(data, self.config, self.info, device, str(path))
        else:  # config.json was read by fetch: only the weights are read here
            encoder = Encoder.from_weights(self.folder / WEIGHTS_NAME, self.config, self.info, device)
        encoder.info.update(self.provenance)
        return encoder


def fetch(source: str | os.PathLike, *, revision: str | None = None, token: str | bool | None = None,
          cache_dir: str | os.PathLike | None = None, local_files_only: bool = False) -> Resolved:
    """Resolve ``source`` to verified local files (downloading from the Hub if needed) without building
    the model; ``revision`` overrides a Hub source's revision (a registry pin is then not checked). Each
    file is hashed once and config.json read once, whatever checks apply."""
    src = parse_source(source)
    digests = Digests()
    hub_kwargs = {"token": token, "cache_dir": cache_dir, "local_files_only": local_files_only, "digests": digests}
    if src.kind == "local":
        folder = Path(src.value).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"no model folder at {folder.resolve()}: check the path (a model folder holds "
                                    "config.json and model.safetensors, e.g. a finished `ssl-zoo train` run)")
        return _from_folder(folder, {"source": f"{LOCAL_PREFIX}{folder.resolve()}"}, digests)
    if src.kind == "hub":
        rev = revision or src.revision
        folder = download(src.value, rev, **hub_kwargs)
        return _from_folder(folder, {"source": f"{HUB_PREFIX}{src.value}", "repo_id": src.value,
                                     "revision": folder.name}, digests)
    entry = resolve(src.value)
    spec, provenance = entry.spec, {"name": entry.full_name}
    if spec.get("build"):
        config = EncoderConfig.from_dict(spec["encoder"])
        return Resolved(config, {**provenance, "source": "built locally"}, build_seed=int(spec["build"]["seed"]),
                        info={"method": entry.model.get("method"), "results": spec.get("results")})
    pins = spec.get("sha256") or {}
    if spec.get("repo_id") and (revision or spec.get("revision")):
        pinned = revision is None or revision == spec.get("revision")
        try:
            folder = download(spec["repo_id"], revision or spec["revision"], **hub_kwargs)
        except ConnectionError:
            if entry.bundled_dir is None or not pinned:
                raise
        else:
            if pinned:
                verify(folder, pins, f"registry entry {entry.full_name}", digests)
            return _from_folder(folder, {**provenance, "source": f"{HUB_PREFIX}{spec['repo_id']}",
                                         "repo_id": spec["repo_id"], "revision": folder.name}, digests)
    if entry.bundled_dir is None:
        raise LookupError(f"{entry.full_name} has neither a pinned Hub revision nor bundled files")
    verify(entry.bundled_dir, pins, f"registry entry {entry.full_name}", digests)
    return _from_folder(entry.bundled_dir, {**provenance, "source": f"bundled:{entry.spec['bundled']}"}, digests)


PROVENANCE_KEYS = ("name", "source", "repo_id", "revision", "sha256")  # set by how a model was loaded, never by its file


def _from_folder(folder: Path, provenance: dict[str, Any], digests: Digests) -> Resolved:
    config, info = read_config(folder)
    info = {k: v for k, v in info.items() if k not in PROVENANCE_KEYS}
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found: a model folder holds config.json and {WEIGHTS_NAME}")
    return Resolved(config, {**provenance, "sha256": digests(weights)}, folder=folder, info=info)


def load(source: str | os.PathLike, *, revision: str | None = None, device: str | torch.device = "cpu",
         token: str | bool | None = None, cache_dir: str | os.PathLike | None = None,
         local_files_only: bool = False) -> Encoder:
    """A ready ``Encoder`` (eval mode, preprocessing attached, files verified) from a registry name
    (``byol-cifar10``, ``byol-cifar10.cpu``), ``hf-hub:owner/repo[@revision]`` or a local path."""
    resolved = fetch(source, revision=revision, token=token, cache_dir=cache_dir, local_files_only=local_files_only)
    return resolved.load(device)
