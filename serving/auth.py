"""The server's API key: where it is read from, and the constant-time check of a request's key."""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from pathlib import Path

ENV_VAR, LEGACY_ENV_VAR = "SSL_ZOO_API_KEY", "LIT_SERVER_API_KEY"


def read_api_key(flag: str | None = None, file: str | os.PathLike | None = None) -> str | None:
    """The key from ``--api-key-file``, ``--api-key``, ``$SSL_ZOO_API_KEY`` or ``$LIT_SERVER_API_KEY``
    (the first given), or None for no key."""
    if file is not None:
        try:
            lines = Path(file).read_text().splitlines()
        except OSError as e:
            raise ValueError(f"cannot read the API key file {file}: {e.strerror}") from e
        key, source = (lines[0] if lines else "").strip(), f"the first line of the API key file {file}"
    elif flag is not None:
        key, source = flag.strip(), "--api-key"
    else:
        variable = next((v for v in (ENV_VAR, LEGACY_ENV_VAR) if os.environ.get(v) is not None), None)
        if variable is None:
            return None
        key, source = os.environ[variable].strip(), f"${variable}"
    if not key:
        raise ValueError(f"{source} is empty: give a non-empty key, or none to serve without one")
    return key


def request_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries: ``X-API-Key: KEY`` or ``Authorization: Bearer KEY`` (what OpenAI clients send)."""
    key = headers.get("x-api-key")
    if key is None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else None
    return key


def key_matches(given: str | None, expected: str) -> bool:
    """Whether ``given`` is the key, compared in constant time."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())
