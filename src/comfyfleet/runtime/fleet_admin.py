"""Run-time fleet administration: list, add, drain, disable, re-enable and remove backends.

Draining (``state=draining``) and disabling take the backend out of selection at once (the slot
script reads the state atomically); its running prompts finish. Removing also fails its work over:
prompts of ours still pending or running there are deleted and interrupted, so their runners see
them end and retry them on another backend.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace
from typing import Any

from ..domain.breaker_scopes import backend_breaker, workflow_scope_of
from ..domain.policy import BreakerState
from ..errors import ComfyFleetError, JobNotFound
from ..store.fleet import BackendHealth, BackendRecord
from .following import stop_prompt

log = logging.getLogger(__name__)

EDITABLE = ("state", "capacity", "tags", "headers", "url")


class FleetAdmin:
    def __init__(self, services: Any) -> None:
        self._services = services
        self._fleet = services.fleet
        self._dispatcher = services.dispatcher

    async def list(self) -> list[dict[str, Any]]:
        snapshot = await self._fleet.snapshot()
        loads = await self._fleet.leases.loads(snapshot.backends)
        breaker = self._dispatcher.settings.backend_breaker
        catalogs = await self._services.node_catalogs.catalogs()
        now = time.time()
        return [{**self._describe(record, snapshot.health.get(name, BackendHealth()),
                                  breaker.current(snapshot.breakers.get(backend_breaker(name), BreakerState()), now),
                                  loads.get(name, 0), snapshot.warm.get(name, frozenset())),
                 # it answered 429/503 with Retry-After: sent nothing until then
                 "resting_until": until if (until := snapshot.resting.get(name, 0.0)) > now else None,
                 # how many node classes its /object_info listed, and when (null: not read yet)
                 "node_classes": ({"count": c.count, "read_at": c.read_at}
                                  if (c := catalogs.get(name)) is not None else None)}
                for name, record in snapshot.backends.items()]

    async def workflow_breakers(self) -> list[dict[str, Any]]:
        """Breakers of (job type, workflow shape, owner) that have seen failures."""
        snapshot = await self._fleet.snapshot()
        breaker = self._dispatcher.settings.workflow_breaker
        found = []
        for field_name, state in snapshot.breakers.items():
            if (scope := workflow_scope_of(field_name)) is None or state.pristine:
                continue
            state = breaker.current(state, time.time())
            found.append({"job_type": scope.job_type, "workflow": scope.fingerprint, "owner": scope.owner,
                          **_breaker_json(state)})
        return sorted(found, key=lambda b: (b["job_type"], b["workflow"], b["owner"] or ""))

    async def get(self, name: str) -> dict[str, Any]:
        for item in await self.list():
            if item["name"] == name:
                return item
        await self._fleet.get(name)  # raises BackendNotFound
        raise AssertionError("unreachable")  # pragma: no cover

    async def add(self, record: BackendRecord) -> dict[str, Any]:
        await self._fleet.add(replace(record, source="api"))
        return await self.get(record.name)

    async def update(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        await self._fleet.update(name, **{k: v for k, v in changes.items() if k in EDITABLE})
        return await self.get(name)

    async def remove(self, name: str) -> dict[str, Any]:
        described = await self.get(name)
        record = await self._fleet.remove(name)
        described["evacuated"] = await self._evacuate(record)
        described["state"] = "removed"
        return described

    async def _evacuate(self, record: BackendRecord) -> int:
        backend = self._dispatcher.by_name(record.name)
        if backend is None:
            return 0
        moved = 0
        for job_id in await self._fleet.leases.holders(record.name):
            try:
                job = await self._services.store.get(job_id)
            except JobNotFound:
                continue
            if job.current is None or job.current.backend != record.name:
                continue
            if await stop_prompt(backend.client, job.current.prompt_id, looks=2):
                moved += 1
            else:  # unreachable: its runner finds the prompt lost anyway
                log.warning("removing %s: could not stop prompt of job %s", record.name, job_id)
        return moved

    @staticmethod
    def _describe(record: BackendRecord, health: BackendHealth, breaker: BreakerState,
                  load: int, warm: frozenset[str]) -> dict[str, Any]:
        state = record.state if record.state != "active" else health.state
        return {"name": record.name, "url": record.url, "capacity": record.capacity,
                "tags": list(record.tags), "headers": sorted(record.headers),
                "admin_state": record.state, "state": state, "load": load,
                "source": record.source, "added_at": record.added_at, "changed_at": record.changed_at,
                "health": asdict(health),
                "breaker": _breaker_json(breaker),
                "warm_models": sorted(warm)}  # loaded by its last successful prompt


def _breaker_json(breaker: BreakerState) -> dict[str, Any]:
    return {"status": breaker.status.value, "failures": len(breaker.failures),
            "opened_at": breaker.opened_at, "changed_at": breaker.changed_at,
            "transitions": [{"at": at, "from": a, "to": b} for at, a, b in breaker.transitions]}


__all__ = ["FleetAdmin", "ComfyFleetError"]
