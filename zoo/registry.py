"""The registry of named models (``registry.json`` beside this file, or ``$SSL_ZOO_REGISTRY``)."""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

DEFAULT_REGISTRY = Path(__file__).with_name("registry.json")


class UnknownModelError(KeyError):
    """A name that is not in the registry (the message suggests the closest names)."""

    def __str__(self) -> str:
        return str(self.args[0])


def registry() -> dict[str, dict[str, Any]]:
    """All entries by name: repo id, pinned revision and sha256, encoder config, results."""
    path = Path(os.environ.get("SSL_ZOO_REGISTRY", DEFAULT_REGISTRY))
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RuntimeError(f"cannot read the model registry {path}: {e}") from e


def entry(name: str) -> dict[str, Any]:
    """One entry; an unknown name raises UnknownModelError suggesting the closest names."""
    entries = registry()
    if name not in entries:
        close = difflib.get_close_matches(name, entries, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}{hint} Known: {', '.join(sorted(entries))}. "
                       "A Hub id (owner/name[@revision]) or a local directory works too.")
    return entries[name]


def list_models() -> list[dict[str, Any]]:
    """Name, method, dataset, k-NN / linear accuracy, Hub id and pinned revision of every entry."""
    rows = []
    for name, e in sorted(registry().items()):
        results = e.get("results") or {}
        rows.append({"name": name, "method": e["method"], "dataset": e["dataset"], "knn5": results.get("knn5"),
                     "linear": results.get("linear"), "repo_id": e.get("repo_id"), "revision": e.get("revision")})
    return rows
