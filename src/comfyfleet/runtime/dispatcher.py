"""Choose a backend for a job attempt and take a capacity slot on it.

Which backends may take a job, in which order, is decided in ``selection.py`` from the registry
snapshot this process keeps (re-read on every fleet change and at least once a second). The slot
itself is taken atomically in Redis (see ``store/fleet.py``), so the choice is exact across all
workers.

When no slot is free the job waits here for a release (published by Redis, so it starts within
milliseconds of a slot freeing; each release wakes one waiting job, chosen by ``slot_line.py``)
up to ``slot_wait_s``; then the runner hands it back to the queue without spending an attempt.
The first waiting job also looks again every ``recheck_s``, in case a release message was missed.

What attempts and health checks teach (breakers, warm models, rests) is noted by
``fleet_memory.py`` (``Dispatcher.memory``), in Redis and in this process's snapshot.

Model affinity: what each backend holds (the models of its last successful prompt) is part of the
snapshot; selection puts the backends holding a job's models first among equals, and with
``affinity_wait_s`` a job may wait a bounded time for one of them (see ``DispatchSettings``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ..comfy.client import ComfyClient
from ..comfy.transport import open_session
from ..domain.breaker_scopes import WorkflowScope
from ..domain.job import Job
from ..domain.models import NO_MODELS
from ..domain.policy import CircuitBreaker
from ..errors import StoreError
from ..store.fleet import BackendRecord, FleetSnapshot, FleetStore
from ..store.node_catalogs import NodeCatalogs
from .class_gaps import ClassGapFinder
from .fleet_memory import FleetMemory
from .selection import Roster, TypeRouting, required_tags, tags_wanted
from .slot_line import CHANGED, RECHECK, SlotLine

log = logging.getLogger(__name__)

UNRELEASED_RETRY_S = 0.5


@dataclass(slots=True)
class Backend:
    """A registered backend as this process uses it: its registry record and its client."""

    record: BackendRecord
    client: ComfyClient

    @property
    def name(self) -> str:
        return self.record.name


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatchSettings:
    slot_wait_s: float = 10.0  # wait in the worker for a slot, then back to the queue
    recheck_s: float = 0.5  # the first waiting job re-checks this often even without a release
    refresh_s: float = 1.0  # re-read the registry at least this often
    backend_breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    workflow_breaker: CircuitBreaker = field(default_factory=lambda: CircuitBreaker(
        failure_threshold=5, window_s=300.0, cooldown_s=60.0))
    routing: Mapping[str, TypeRouting] = field(default_factory=dict)
    model_affinity: bool = True  # among equally free backends, prefer those holding the job's models
    # A job whose models are held only by busy backends waits this long for one of them before it
    # takes a free backend that would load them again; and a freed backend may go to a job loading
    # its models before the first job in line, for at most this long per passed-over job
    # (0: neither; jobs keep their order and a GPU never idles while a job waits).
    affinity_wait_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Choice:
    backend: Backend | None = None
    fatal: str | None = None  # no backend can ever take this job
    circuit_open: str | None = None  # this job's workflow breaker is open


class Dispatcher:
    def __init__(self, fleet: FleetStore, *, http=None, settings: DispatchSettings = DispatchSettings(),
                 clock: Callable[[], float] = time.time,
                 client_factory: Callable[[BackendRecord], ComfyClient] | None = None,
                 catalogs: NodeCatalogs | None = None) -> None:
        """Backend clients come from ``client_factory``, else share ``http``, else each backend
        gets an HTTP connection pool of its own (the default for a fleet: one pool shared by many
        backends scans all its connections on every request)."""
        self.fleet = fleet
        self.settings = settings
        self._class_gaps = ClassGapFinder(catalogs)  # which node classes each backend lacks
        self._clock = clock
        self._pools: list[aiohttp.ClientSession] = []
        if client_factory is None and http is not None:
            client_factory = lambda r: ComfyClient(r.url, http=http, name=r.name,  # noqa: E731
                                                   headers=dict(r.headers))
        self._client_factory = client_factory or self._own_client
        self._snapshot: FleetSnapshot | None = None
        self._roster: Roster | None = None  # made from the snapshot when first needed
        self._backends: dict[str, Backend] = {}
        self._turn = itertools.count()
        # what outcomes and health checks teach: written for all, patched into the snapshot here
        self.memory = FleetMemory(fleet, backend_breaker=settings.backend_breaker,
                                  workflow_breaker=settings.workflow_breaker,
                                  model_affinity=settings.model_affinity,
                                  snapshot=lambda: self._snapshot, changed=self._fleet_changed, clock=clock)
        self._line = SlotLine(affinity_wait_s=settings.affinity_wait_s, clock=clock,
                              warm_of=self.memory.warm_of)
        self._held: dict[str, str] = {}  # holder (job id) -> backend name
        # holder -> backend: slot releases the store missed (it was away), retried every
        # half second so the slot frees when it is back, not when its lease runs out (30 s)
        self._unreleased: dict[str, str] = {}
        self._releasing = asyncio.Lock()  # a retried release lands before its holder acquires again
        self._tasks: list[asyncio.Task] = []
        self._subscribed = asyncio.Event()
        self._closing = False
        self.health = None  # a HealthMonitor once health checks run in this process

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        await self.refresh()
        self._tasks = [asyncio.create_task(self._listen(), name="fleet-listen"),
                       asyncio.create_task(self._every(self.settings.refresh_s, self.refresh),
                                           name="fleet-refresh"),
                       asyncio.create_task(self._recheck_forever(), name="slot-recheck"),
                       asyncio.create_task(self._every(self.fleet.leases.ttl_s / 3, self._renew),
                                           name="lease-renew"),
                       asyncio.create_task(self._every(UNRELEASED_RETRY_S, self._release_missed),
                                           name="slot-release-retry")]
        with contextlib.suppress(TimeoutError):  # listening before the first job is taken
            async with asyncio.timeout(5.0):
                await self._subscribed.wait()

    async def close(self) -> None:
        self._closing = True  # redis-py's get_message can swallow a cancel: the loop checks this too
        if self.health is not None:
            await self.health.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        pools, self._pools = self._pools, []
        await asyncio.gather(*(pool.close() for pool in pools), return_exceptions=True)

    def _own_client(self, record: BackendRecord) -> ComfyClient:
        pool = open_session(limit=64)
        self._pools.append(pool)
        return ComfyClient(record.url, http=pool, name=record.name, headers=dict(record.headers))

    async def refresh(self) -> FleetSnapshot:
        snapshot = await self.fleet.snapshot()
        if self._closing:  # closed (or closing): no new connection pool may be opened
            self._snapshot, self._roster = snapshot, None
            return snapshot
        for name, record in snapshot.backends.items():
            known = self._backends.get(name)
            if known is None or known.record.url != record.url or known.record.headers != record.headers:
                self._backends[name] = Backend(record=record, client=self._client_factory(record))
            else:
                known.record = record  # same server: keep its client and connections
        self._snapshot = snapshot
        self._roster = None
        return snapshot

    async def _wake_for_room(self) -> None:
        """After a fleet change: wake one waiting job per free slot of an active backend (one
        read of every load); all of them if the loads cannot be read."""
        snapshot = self._snapshot
        if snapshot is None:
            return
        roster = self.roster(self._clock())
        self._line.rework_usable(lambda wants: roster.allowed(*wants))  # a backend added, say
        active = {name: record.capacity for name, record in snapshot.backends.items() if record.state == "active"}
        try:
            loads = await self.fleet.leases.loads(active, self._clock())
        except StoreError as exc:
            log.warning("fleet: %s; every waiting job looks again", exc)
            self._line.wake_all()
            return
        self._line.wake_for_room({name: capacity - loads.get(name, 0) for name, capacity in active.items()})

    async def _every(self, period_s: float, action) -> None:
        while not self._closing:  # checked too: a cancel the Redis client swallowed ends it here
            await asyncio.sleep(period_s)
            try:
                await action()
            except StoreError as exc:
                log.warning("fleet: %s", exc)

    async def _listen(self) -> None:
        keys = self.fleet.keys
        while not self._closing:
            pubsub = self.fleet.pubsub()
            try:
                await pubsub.subscribe(keys.fleet_channel, keys.slots_channel)
                if self._subscribed.is_set():  # re-subscribed: catch up on what was missed
                    await self.refresh()
                    await self._wake_for_room()
                while not self._closing:
                    message = await pubsub.get_message(ignore_subscribe_messages=False, timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] != "message":
                        self._subscribed.set()
                        continue
                    if message["channel"] == keys.slots_channel:
                        self._line.wake_one(str(message["data"]))
                        continue
                    # A registry change. A burst of them (an operator enabling fifty backends)
                    # costs one re-read: what else has arrived meanwhile is taken in first.
                    while (more := await pubsub.get_message(timeout=0.0)) is not None:
                        if more["type"] == "message" and more["channel"] == keys.slots_channel:
                            self._line.wake_one(str(more["data"]))
                    await self.refresh()
                    await self._wake_for_room()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a lost subscription is re-made; polling covers the gap
                log.warning("fleet: subscription lost (%s); re-subscribing", exc)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2.0):  # never let a stuck connection hold up shutdown
                        await pubsub.aclose()

    # -- views -------------------------------------------------------------------------------
    @property
    def snapshot(self) -> FleetSnapshot | None:
        return self._snapshot

    @property
    def backends(self) -> list[Backend]:
        names = self._snapshot.backends if self._snapshot else {}
        return [self._backends[n] for n in names if n in self._backends]

    def by_name(self, name: str) -> Backend | None:
        """Any backend this process has known, including one removed since (to finish its work)."""
        return self._backends.get(name)

    def routing_for(self, job_type: str) -> TypeRouting:
        return self.settings.routing.get(job_type, TypeRouting())

    def allowed_backends(self, job_type: str, metadata: Mapping[str, Any] | None) -> frozenset[str]:
        """Every registered backend that a job of ``job_type`` with ``metadata`` may run on by
        its tags, whatever its state now; none before the registry was first read."""
        if self._snapshot is None:
            return frozenset()
        routing = self.routing_for(job_type)
        return self.roster(self._clock()).allowed(tags_wanted(metadata, routing), routing)

    def roster(self, now: float) -> Roster:
        """The fleet as selection sees it at ``now`` (made again after a refresh, a breaker
        change, or the end of an open breaker's cool-down)."""
        roster = self._roster
        if roster is None or now >= roster.valid_until:
            assert self._snapshot is not None
            roster = self._roster = Roster.of(self._snapshot, self.settings.backend_breaker, now)
        return roster

    def _fleet_changed(self) -> None:
        """What this process knows of the fleet changed (a lesson noted): make the roster again."""
        self._roster = None

    # -- slots ---------------------------------------------------------------------------------
    async def acquire(self, job: Job, *, workflow: WorkflowScope | None = None,
                      models: frozenset[str] = NO_MODELS, classes: frozenset[str] = frozenset(),
                      wait_s: float | None = None) -> Choice:
        """A backend with a slot taken for ``job`` (which loads ``models`` and uses the node
        ``classes``), waiting up to ``wait_s`` for one."""
        if self._snapshot is None:
            await self.refresh()
        if job.id in self._unreleased:
            await self._release_missed(job.id)
        if workflow is not None and not self.memory.workflow_allows(workflow):
            whose = f" of jobs owned by {workflow.owner}" if workflow.owner else ""
            return Choice(circuit_open=f"the circuit breaker of this workflow ({workflow.job_type}, "
                                       f"{workflow.fingerprint}) is open after repeated failures{whose}")
        routing = self.routing_for(job.type)
        gaps = await self._class_gaps.gaps(classes, self._snapshot)
        lacking = gaps.lacking  # would refuse the prompt
        if lacking:
            allowed = self.roster(self._clock()).allowed(required_tags(job, routing), routing)  # by tags, whatever their state
            by_backend = gaps.by_backend
            if allowed and all(by_backend.get(name) for name in allowed):  # each known, each lacks one
                missing = sorted(set().union(*(by_backend[name] or () for name in allowed)))
                return Choice(fatal=f"no backend this job may use has every node class its workflow "
                                    f"uses (each lacks one of: {', '.join(missing)})")
        wait_s = self.settings.slot_wait_s if wait_s is None else wait_s
        until = self._clock() + wait_s
        if not self.settings.model_affinity:
            models = NO_MODELS
        warm_until = self._clock() + self.settings.affinity_wait_s if models else 0.0
        wants = (required_tags(job, routing), routing)
        waiter = self._line.join(job.priority, models, usable=self.roster(self._clock()).allowed(*wants),
                                 wants=wants)
        try:
            cause: str | None = None  # why this look: None (the first), a release, RECHECK or CHANGED
            while True:
                now = self._clock()
                plan = self.roster(now).plan(job, routing, turn=next(self._turn), models=models)
                if plan.fatal:
                    return Choice(fatal=plan.fatal)
                candidates = plan.candidates
                if lacking:
                    candidates = tuple(c for c in candidates if c[0] not in lacking)
                if now < warm_until:  # only the backends holding its models, for a while
                    warm = self.roster(now).holding(models)
                    candidates = tuple(c for c in candidates if c[0] in warm) or candidates
                    if len(candidates) == len(plan.candidates):
                        warm_until = 0.0  # held nowhere it may run (or everywhere): no reason to wait
                waiter.rearm(frozenset(name for name, _, _ in candidates))
                if cause is None and self._line.queue_ahead(waiter):
                    candidates = ()  # jobs already wait for these backends: none has room
                elif cause not in (None, RECHECK, CHANGED):
                    # Woken by one backend's release: no other had room when this job last
                    # looked, so only that one is worth asking (not a walk of the whole fleet).
                    candidates = tuple(c for c in candidates if c[0] == cause)
                name = await self.fleet.leases.acquire(candidates, job.id, now)
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    # Cancelled while Redis answered, and the client swallowed it: honour it.
                    if name is not None:
                        await self.fleet.leases.release(name, job.id)
                    raise asyncio.CancelledError
                if name is not None:
                    self._held[job.id] = name
                    if RECHECK in (cause, waiter.woken_by):  # a release was missed: maybe more
                        self._line.wake_first(skip=waiter)
                    if waiter.woken_by not in (None, RECHECK, CHANGED):  # a release meant for a waiter
                        self._line.wake_one(waiter.woken_by, skip=waiter)  # pass it on
                    return Choice(backend=self._backends.get(name))
                remaining = until - self._clock()
                if remaining <= 0:
                    return Choice()
                if warm_until > self._clock():  # look again, at every backend, when the wait ends
                    remaining = min(remaining, warm_until - self._clock())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await waiter.event.wait()
                cause = waiter.woken_by
        finally:
            self._line.leave(waiter)

    async def forget_node_catalog(self, name: str) -> None:
        await self._class_gaps.forget(name)

    async def release(self, name: str, holder: str) -> None:
        self._held.pop(holder, None)
        try:
            await self.fleet.leases.release(name, holder)
        except StoreError as exc:
            self._unreleased[holder] = name
            log.warning("fleet: could not release the slot of %s on %s (retrying): %s", holder, name, exc)

    async def _release_missed(self, only: str | None = None) -> None:
        """Release the slots the store missed releasing (of holder ``only``, or all). A store
        still away ends the round quietly (the miss was logged) unless ``only`` asked."""
        if not self._unreleased:
            return
        async with self._releasing:
            for holder, name in list(self._unreleased.items()):
                if only is not None and holder != only:
                    continue
                try:
                    await self.fleet.leases.release(name, holder)
                except StoreError:
                    if only is not None:
                        raise
                    return
                if self._unreleased.get(holder) == name:
                    del self._unreleased[holder]

    def forget(self, holder: str) -> None:
        """Stop renewing ``holder``'s slot here without releasing it (a job handed back while
        its prompt runs: the runner that takes it over holds the slot on, else it expires)."""
        self._held.pop(holder, None)

    async def hold(self, name: str, holder: str) -> None:
        """Make sure ``holder`` has a renewed slot on ``name`` (a reattached job: its prompt runs
        there, whatever the load). Renewed from here on only once the first renewal landed."""
        if self._held.get(holder) == name:
            return
        await self.fleet.leases.renew([(name, holder)], self._clock())
        self._held[holder] = name

    async def hold_many(self, slots: list[tuple[str, str]]) -> None:
        """``hold`` for many (backend, holder) pairs in one round."""
        slots = [(name, holder) for name, holder in slots if self._held.get(holder) != name]
        if not slots:
            return
        await self.fleet.leases.renew(slots, self._clock())
        self._held.update((holder, name) for name, holder in slots)

    async def take_on(self, name: str, holder: str) -> bool:
        """A slot on ``name`` alone for ``holder``, if it takes work and has room (or ``holder``
        has one there still): for a prompt recorded as bound there but never sent."""
        record = self._snapshot.backends.get(name) if self._snapshot is not None else None
        if record is None:
            return False
        if self._held.get(holder) == name:
            return True
        if await self.fleet.leases.acquire([(name, record.capacity, 0)], holder, self._clock()) is None:
            return False
        self._held[holder] = name
        return True

    async def _renew(self) -> None:
        await self.fleet.leases.renew([(name, holder) for holder, name in list(self._held.items())],
                               self._clock())

    async def _recheck_forever(self) -> None:
        """Release messages wake waiting jobs one by one; should one be missed (a dropped
        subscription), the first waiting job looks again every ``recheck_s``, and a slot found
        that way wakes the next. Only one job re-checks: a few hundred waiting jobs each walking
        every candidate twice a second cost more than the dispatching itself."""
        while True:
            await asyncio.sleep(self.settings.recheck_s * (0.5 + random.random()))
            self._line.wake_first()
