"""A backend as the registry knows it (``BackendRecord``), and what makes two backend URLs the
same ComfyUI server. Pure data: the registry itself is ``store/fleet.py``."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

BACKEND_STATES = ("active", "draining", "disabled")
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class BackendRecord:
    """One ComfyUI server as the registry knows it. ``state``: active | draining | disabled."""

    name: str
    url: str
    capacity: int = 1
    tags: tuple[str, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)
    state: str = "active"
    source: str = "config"  # config | api
    added_at: float = 0.0
    changed_at: float = 0.0

    def to_json(self) -> str:
        data = asdict(self)
        data["tags"] = list(self.tags)
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> "BackendRecord":
        data = json.loads(raw)
        data["tags"] = tuple(data.get("tags") or ())
        return cls(**{k: data[k] for k in cls.__slots__ if k in data})


def server_of(url: str) -> tuple[str, str, int | None, str]:
    """What makes two backend URLs the same ComfyUI server: scheme, host, port, path (case of
    scheme and host, a default port and a trailing slash aside)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return (scheme, (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS.get(scheme),
            parts.path.rstrip("/"))


def same_server_as(url: str, records: Iterable[BackendRecord], *, other_than: str) -> str | None:
    """The name of a backend other than ``other_than`` at the server ``url`` names, if any."""
    server = server_of(url)
    return next((r.name for r in records if r.name != other_than and server_of(r.url) == server), None)
