"""What the server serves and the limits it keeps: plain data shared by the routes, the worker and the CLI."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from zoo.imagefile import ImageLimits

from .errors import HTTPError


@dataclass(frozen=True)
class Limits:
    """Limits per request (images, body, deadlines) and per connection (headers, idle time, count)."""

    max_images: int = 64
    image: ImageLimits = field(default_factory=ImageLimits)
    max_body_bytes: int = 32 * 1024 * 1024
    max_inflight_bytes: int = 256 * 1024 * 1024
    body_timeout: float = 20.0
    request_timeout: float = 30.0
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0
    keep_alive: float = 5.0
    max_connections: int = 256
    max_client_connections: int = 32

    def as_dict(self) -> dict[str, Any]:
        """The limits as JSON-ready data (for ``/info``)."""
        return asdict(self)


@dataclass(frozen=True)
class SearchSettings:
    """``POST /search``: the indexed embed output it searches, the k a request gets by default, the largest it may ask."""

    directory: str
    default_k: int = 10
    max_k: int = 100
    absolute_paths: bool = False  # answer the server's own paths; by default paths relative to the collection
    model: str | None = None  # the served model that embedded the collection (/search embeds with it)

    def __post_init__(self) -> None:
        if not 1 <= self.default_k <= self.max_k:
            raise ValueError(f"need 1 <= --search-k <= --max-search-k, got --search-k {self.default_k}, "
                             f"--max-search-k {self.max_k}")


@dataclass(frozen=True)
class ServedModel:
    """The model being served: the name it answers to and its aliases, its output, its provenance."""

    name: str
    aliases: tuple[str, ...]
    dim: int
    input_size: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    provenance: dict[str, Any]
    backend: str

    def accepts(self, name: str) -> bool:
        """Whether a request's ``model`` names this model."""
        return name in self.aliases

    def info(self) -> dict[str, Any]:
        """Model, provenance and preprocessing as JSON-ready data (for ``/info`` and the ready line)."""
        return {"model": self.name, "aliases": list(self.aliases), "dim": self.dim, "backend": self.backend,
                **{k: self.provenance.get(k) for k in ("source", "repo_id", "revision", "sha256")},
                "preprocessing": {"input_size": self.input_size, "mean": self.mean, "std": self.std,
                                  "resize": "short side to input size, then center crop"}}


class ServedModels(tuple):
    """The models a server serves, the first the default; each request selects one by any of its aliases."""

    def select(self, name: object) -> ServedModel:
        """The model ``name`` names (None: the first); a 404 listing the served models otherwise."""
        if name is None:
            return self[0]
        match = next((m for m in self if isinstance(name, str) and m.accepts(name)), None)
        if match is None:
            served = "; ".join(" = ".join(m.aliases) for m in self)
            raise HTTPError(404, f"model {name!r} is not served here; this server serves: {served} (any of these "
                            "names; a request without one gets the first)")
        return match

    def position(self, model: ServedModel) -> int:
        """The model's position: what a queue item names it by."""
        return self.index(model)


def model_aliases(spec: str, provenance: dict[str, Any]) -> tuple[str, ...]:
    """The names a request may use for the model: as given on the command line, its registry ``name.tag``,
    its source (``hf-hub:owner/name``, ``local-dir:/path``) and Hub repo id."""
    source = provenance.get("source") or ""
    names = [spec, provenance.get("name"), source if source.startswith(("hf-hub:", "local-dir:")) else None,
             provenance.get("repo_id")]
    return tuple(dict.fromkeys(n for n in names if n))
