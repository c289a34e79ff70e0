"""The registry of named models, timm-style: ``name`` is the model's best available weights,
``name.tag`` names one set of them (``zoo/registry.json``, or ``$SSL_ZOO_REGISTRY``).

Each model has ``default_tag`` and ``tags``; a tag holds its encoder config, its results with
their protocol, and where its files come from: ``bundled`` (a folder under ``zoo/pretrained/``,
shipped with the package), a Hub ``repo_id`` + pinned ``revision``, or ``build`` (the random-init
baseline, made locally from a seed). ``sha256`` pins every file that defines the model. A tag
with ``pending`` has no weights yet and says why.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parents[1]  # zoo/: registry.json and pretrained/ ship as package data
DEFAULT_REGISTRY = PACKAGE / "registry.json"
PRETRAINED_DIR = PACKAGE / "pretrained"


class UnknownModelError(KeyError):
    """A name that is not in the registry (the message suggests the closest names)."""

    def __str__(self) -> str:
        return str(self.args[0])


class PendingModelError(LookupError):
    """A registry tag whose weights do not exist yet (the message says what is needed)."""


@dataclass(frozen=True)
class Entry:
    """One resolved ``name.tag`` of the registry."""

    name: str
    tag: str
    model: dict[str, Any]
    spec: dict[str, Any]

    @property
    def full_name(self) -> str:
        """``name.tag``."""
        return f"{self.name}.{self.tag}"

    @property
    def bundled_dir(self) -> Path | None:
        """The folder of the weights shipped with the package, if this tag has one."""
        return PRETRAINED_DIR / self.spec["bundled"] if self.spec.get("bundled") else None


def registry_file() -> Path:
    """The registry in use: ``$SSL_ZOO_REGISTRY``, else ``zoo/registry.json``."""
    return Path(os.environ.get("SSL_ZOO_REGISTRY", DEFAULT_REGISTRY))


def registry() -> dict[str, dict[str, Any]]:
    """All models by name, each with ``default_tag`` and ``tags``."""
    path = registry_file()
    try:
        models = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RuntimeError(f"cannot read the model registry {path}: {e}") from e
    for name, model in models.items():
        if not isinstance(model, dict) or model.get("default_tag") not in model.get("tags", {}):
            raise RuntimeError(f"model registry {path}: {name!r} needs 'tags' and a 'default_tag' among them")
    return models


def resolve(name: str) -> Entry:
    """The entry for ``name`` (its default tag) or ``name.tag``; an unknown name raises
    UnknownModelError suggesting the closest names."""
    models = registry()
    base, _, tag = name.partition(".") if name not in models else (name, "", "")
    if base not in models:
        known = sorted(models) + [f"{m}.{t}" for m in models for t in models[m]["tags"]]
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}{hint} Known: {', '.join(sorted(models))}. For a Hub repo "
                                "write hf-hub:owner/name[@revision]; for a folder, a path (./dir or local-dir:dir).")
    model = models[base]
    tag = tag or model["default_tag"]
    if tag not in model["tags"]:
        raise UnknownModelError(f"{base} has no tag {tag!r}; its tags: {', '.join(sorted(model['tags']))}")
    spec = model["tags"][tag]
    if spec.get("pending"):
        raise PendingModelError(f"{base}.{tag} has no weights yet: {spec['pending']}")
    return Entry(base, tag, model, spec)


def list_models(pattern: str | None = None, *, details: bool = False) -> list[str] | list[dict[str, Any]]:
    """The ``name.tag`` of every model (matching the shell-style ``pattern``, e.g. ``"byol*"``), as timm's
    ``list_models``; ``details=True``: one row each with method, architecture, width, epochs, compute,
    results with their protocol, and where the files come from."""
    rows = []
    for name, model in sorted(registry().items()):
        for tag, spec in model["tags"].items():
            full = f"{name}.{tag}"
            if pattern and not (fnmatch.fnmatch(full, pattern) or fnmatch.fnmatch(name, pattern)):
                continue
            encoder = spec.get("encoder") or {}
            rows.append({
                "name": full, "default": tag == model["default_tag"], "method": model.get("method"),
                "dataset": model.get("dataset"), "architecture": encoder.get("architecture"),
                "width": (encoder.get("kwargs") or {}).get("width"), "epochs": spec.get("epochs"),
                "compute": spec.get("compute"), "results": spec.get("results") or {},
                "protocol": spec.get("protocol") or {}, "source": _source(spec), "pending": spec.get("pending"),
            })
    return rows if details else [row["name"] for row in rows]


def _source(spec: dict[str, Any]) -> str:
    if spec.get("pending"):
        return "pending"
    if spec.get("build"):
        return "built locally"
    where = []
    if spec.get("repo_id") and spec.get("revision"):
        where.append(f"hf-hub:{spec['repo_id']}@{spec['revision'][:12]}")
    if spec.get("bundled"):
        where.append(f"bundled ({spec['bundled']})")
    return ", ".join(where) or "-"
