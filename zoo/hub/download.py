"""Download an encoder repo from the Hugging Face Hub in one snapshot and verify it."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import (LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)

from ..io import CONFIG_NAME, WEIGHTS_NAME, sha256_file

MODEL_FILES = (CONFIG_NAME, WEIGHTS_NAME)


class Digests:
    """sha256 of files, each computed once: the checks of one load (LFS object id, registry pin, provenance)
    share them."""

    def __init__(self) -> None:
        self._known: dict[Path, str] = {}

    def __call__(self, path: Path) -> str:
        """The sha256 of ``path``'s bytes."""
        key = Path(path).resolve()
        if key not in self._known:
            self._known[key] = sha256_file(key)
        return self._known[key]


class HashMismatchError(RuntimeError):
    """A file's sha256 differs from the pinned one."""


def endpoint() -> str:
    """The Hub endpoint huggingface_hub talks to (``HF_ENDPOINT``)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def download(repo_id: str, revision: str | None = None, *, token: str | bool | None = None,
             cache_dir: str | os.PathLike | None = None, local_files_only: bool = False,
             digests: Digests | None = None) -> Path:
    """The local snapshot folder holding ``config.json`` and ``model.safetensors`` of ``repo_id@revision``
    (one ``snapshot_download``; the Hub cache, ``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE`` apply).
    The weights are checked against the Hub's LFS object id, which names the cached blob."""
    where = f"{repo_id}@{revision or 'main'}"
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(MODEL_FILES), token=token,
                                        cache_dir=cache_dir, local_files_only=local_files_only))
    except RepositoryNotFoundError as e:
        raise FileNotFoundError(f"model repo {repo_id} not found on the Hub ({endpoint()}); check the id, or set "
                                "HF_TOKEN if it is private") from e
    except RevisionNotFoundError as e:
        raise FileNotFoundError(f"revision {revision} not found in {repo_id} ({endpoint()})") from e
    except LocalEntryNotFoundError as e:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            raise ConnectionError(f"{where} is not in the local cache and HF_HUB_OFFLINE is set, so the Hub "
                                  f"({endpoint()}) was not asked: unset HF_HUB_OFFLINE to download it, or load a "
                                  "cached revision") from e
        raise ConnectionError(f"cannot reach the Hub ({endpoint()}) and {where} is not in the local cache; "
                              "connect to the network, or load a cached revision") from e
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{where} has no {', '.join(missing)}: not an ssl-zoo encoder repo")
    weights = folder / WEIGHTS_NAME
    blob = weights.resolve().name  # huggingface_hub names LFS blobs by their sha256
    if len(blob) == 64:
        verify(folder, {WEIGHTS_NAME: blob}, f"{where} (the Hub's LFS object id)", digests)
    return folder


def verify(folder: Path, pins: dict[str, str], source: str, digests: Digests | None = None) -> None:
    """Check each pinned file's sha256; a mismatch raises HashMismatchError and deletes nothing."""
    digests = digests or Digests()
    for name, expected in pins.items():
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (pinned by {source})")
        actual = digests(path)
        if actual != expected:
            raise HashMismatchError(f"{path.name} of {source}: sha256 {actual} does not match the pin {expected}. "
                                    f"The file at {path.resolve()} was left in place; delete it (or the "
                                    "huggingface_hub cache entry) to fetch it again.")
