"""Which of a job's node classes each registered backend lacks, from the backends' node catalogs
(``store/node_catalogs.py``): a backend lacking one would refuse the prompt."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import StoreError
from ..store.fleet import FleetSnapshot
from ..store.node_catalogs import NodeCatalogs

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ClassGaps:
    """Which of a job's node classes each registered backend lacks (empty: it has them all;
    None: its catalog is not known yet, so it is not held back), and the backends lacking one."""

    by_backend: Mapping[str, frozenset[str] | None]
    lacking: frozenset[str]


NO_GAPS = ClassGaps({}, frozenset())


class ClassGapFinder:
    def __init__(self, catalogs: NodeCatalogs | None) -> None:
        self._catalogs = catalogs  # None: not consulted, no backend is held back
        self._seen_with: tuple[object, object] | None = None  # what _by_classes came from
        self._by_classes: dict[frozenset[str], ClassGaps] = {}

    async def gaps(self, classes: frozenset[str], snapshot: FleetSnapshot | None) -> ClassGaps:
        """Which of ``classes`` each backend of ``snapshot`` lacks. Worked out once per class set
        until the catalogs or the registry change."""
        if not classes or self._catalogs is None or snapshot is None:
            return NO_GAPS
        catalogs = await self._catalogs.catalogs()
        seen = self._seen_with  # catalogs and registry: replaced when they change, not edited
        if seen is None or seen[0] is not catalogs or seen[1] is not snapshot:
            self._seen_with, self._by_classes = (catalogs, snapshot), {}
        if (found := self._by_classes.get(classes)) is not None:
            return found
        known = await self._catalogs.classes_of(snapshot.backends)
        by_backend = {name: None if has is None else classes - has for name, has in known.items()}
        found = self._by_classes[classes] = ClassGaps(
            by_backend, frozenset(name for name, gap in by_backend.items() if gap))
        return found

    async def forget(self, name: str) -> None:
        """``name`` refused a node class: what is known of its classes goes, so its next health
        check reads them again (meanwhile it is not held back, nor are workflows judged by it)."""
        if self._catalogs is None:
            return
        try:
            await self._catalogs.forget(name)
        except StoreError as exc:
            log.warning("fleet: could not forget the node catalog of %s: %s", name, exc)
