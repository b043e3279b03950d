"""Which node classes each backend has, as its ``/object_info`` last listed them.

A catalog is stored by digest (``{p}:fleet:node_sets``: digest -> names), and each backend
names its digest with the time it was read (``{p}:fleet:nodes``): a fleet of alike servers
keeps one list of a few thousand names, not one per server. Both are written in one
step, and only while the backend is still registered at the url that was read. A digest names its contents, so a set read once is kept in memory for good; the
backend -> digest map is re-read at most once a second.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .connection import translated
from .keys import Keys
from .lua import script

CATALOGS_FRESH_S = 1.0


@dataclass(frozen=True, slots=True)
class NodeCatalog:
    """One backend's catalog as stored: which set, read when, how many classes."""

    digest: str
    read_at: float
    count: int

    @classmethod
    def from_json(cls, raw: str) -> "NodeCatalog | None":
        try:
            data = json.loads(raw)
            return cls(str(data["digest"]), float(data["read_at"]), int(data["count"]))
        except (ValueError, TypeError, KeyError):
            return None


def catalog_digest(classes: frozenset[str]) -> str:
    return hashlib.sha256("\n".join(sorted(classes)).encode()).hexdigest()[:32]


class NodeCatalogs:
    def __init__(self, redis: Any, keys: Keys, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._redis = redis
        self._keys = keys
        self._clock = clock
        self._sets: dict[str, frozenset[str]] = {}  # digest -> names (a digest never changes meaning)
        self._catalogs: dict[str, NodeCatalog] = {}
        self._catalogs_read_at = float("-inf")
        self._forget_unused_sets = redis.register_script(script("node_sets_unused.lua"))
        self._hset_if_backend_at = redis.register_script(script("hset_if_backend_at.lua"))

    async def record(self, backend: str, url: str, classes: frozenset[str], read_at: float) -> NodeCatalog | None:
        """``backend``'s ``/object_info`` at ``url`` listed ``classes`` at ``read_at``; None (and
        nothing stored) when ``backend`` was meanwhile moved to another url or removed."""
        catalog = NodeCatalog(catalog_digest(classes), read_at, len(classes))
        entry = json.dumps({"digest": catalog.digest, "read_at": read_at, "count": catalog.count})
        with translated(self._redis, "recording a node catalog"):
            written = await self._hset_if_backend_at(
                keys=[self._keys.fleet_backends, self._keys.fleet_node_sets, self._keys.fleet_nodes],
                args=[backend, url, catalog.digest, json.dumps(sorted(classes)), backend, entry])
        if not written:
            return None
        self._sets[catalog.digest] = classes
        self._catalogs = {**self._catalogs, backend: catalog}  # replaced, never changed in place
        return catalog

    async def catalogs(self) -> dict[str, NodeCatalog]:
        """Backend name -> its catalog, for the backends whose catalog was ever read. The same
        object until something changed (then a new one): callers may key on its identity."""
        if self._clock() - self._catalogs_read_at >= CATALOGS_FRESH_S:
            with translated(self._redis, "reading the node catalogs"):
                raw = await self._redis.hgetall(self._keys.fleet_nodes)
            self._catalogs = {name: c for name, text in raw.items() if (c := NodeCatalog.from_json(text))}
            self._catalogs_read_at = self._clock()
        return self._catalogs

    async def classes_of(self, backends: Iterable[str]) -> dict[str, frozenset[str] | None]:
        """Backend -> the classes it has; None where not known (no catalog read, or its list
        being replaced). Alike backends share one set object."""
        catalogs = await self.catalogs()
        return {name: await self.classes(catalog) if (catalog := catalogs.get(name)) is not None else None
                for name in backends}

    async def classes(self, catalog: NodeCatalog) -> frozenset[str] | None:
        """The classes of ``catalog``; None when its set is gone (a catalog being replaced)."""
        known = self._sets.get(catalog.digest)
        if known is not None:
            return known
        with translated(self._redis, "reading a node catalog"):
            raw = await self._redis.hget(self._keys.fleet_node_sets, catalog.digest)
        try:
            names = json.loads(raw) if raw is not None else None
        except ValueError:
            names = None
        if not isinstance(names, list):
            return None
        self._sets[catalog.digest] = found = frozenset(str(n) for n in names)
        return found

    async def forget(self, backend: str) -> None:
        """``backend`` was removed: its catalog goes (its set, when unused, with housekeeping)."""
        with translated(self._redis, "forgetting a node catalog"):
            await self._redis.hdel(self._keys.fleet_nodes, backend)
        self._catalogs = {name: c for name, c in self._catalogs.items() if name != backend}

    async def forget_unused_sets(self) -> int:
        """Delete the class sets no backend names any more; how many went."""
        with translated(self._redis, "forgetting unused node catalogs"):
            return int(await self._forget_unused_sets(keys=[self._keys.fleet_nodes, self._keys.fleet_node_sets]))
