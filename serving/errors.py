"""The one error a request is answered with: an HTTP status and a message saying what was wrong and what to do."""

from __future__ import annotations


class HTTPError(Exception):
    """Raised where a request fails (decoding, limits, routes, the inference worker); answered with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
