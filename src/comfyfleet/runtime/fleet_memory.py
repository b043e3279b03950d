"""What attempts and health checks teach the fleet: breaker outcomes, warm models and rests.

Each lesson is written to Redis for every process, and into this process's fleet snapshot at
once (its next re-read would bring it a second later, and a job dispatched meanwhile would not
know). The dispatcher owns the snapshot; this module only patches it and says so (``changed``),
so the dispatcher makes its roster again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..domain.breaker_scopes import WorkflowScope, backend_breaker, workflow_breaker
from ..domain.failures import FailureClass
from ..domain.models import NO_MODELS
from ..domain.policy import BreakerState, CircuitBreaker
from ..errors import StoreError
from ..store.fleet import FleetSnapshot, FleetStore

log = logging.getLogger(__name__)

Change = Callable[[BreakerState, float], BreakerState]  # a breaker's state and the time -> its next
REST_SLACK_S = 1.0  # a backend's rest known to end this close to a new one is not written again


class FleetMemory:
    def __init__(self, fleet: FleetStore, *, backend_breaker: CircuitBreaker,
                 workflow_breaker: CircuitBreaker, model_affinity: bool,
                 snapshot: Callable[[], FleetSnapshot | None], changed: Callable[[], None],
                 clock: Callable[[], float]) -> None:
        self._fleet = fleet
        self._backend_breaker = backend_breaker
        self._workflow_breaker = workflow_breaker
        self._model_affinity = model_affinity
        self._snapshot = snapshot
        self._changed = changed
        self._clock = clock

    # -- reads ---------------------------------------------------------------------------------
    def workflow_allows(self, scope: WorkflowScope) -> bool:
        return self._workflow_breaker.allows(self._breaker_state(workflow_breaker(scope)), self._clock())

    def warm_of(self, name: str) -> frozenset[str]:
        snapshot = self._snapshot()
        return snapshot.warm.get(name, NO_MODELS) if snapshot is not None else NO_MODELS

    def _breaker_state(self, scope: str) -> BreakerState:
        snapshot = self._snapshot()
        return (snapshot.breakers if snapshot else {}).get(scope, BreakerState())

    # -- outcomes ------------------------------------------------------------------------------
    async def record(self, backend: str | None, workflow: WorkflowScope | None,
                     failure_class: FailureClass | None) -> None:
        """Feed an attempt's outcome to the breakers of its backend and of its workflow."""
        try:
            if backend is not None:
                if failure_class in (FailureClass.TRANSIENT, FailureClass.FATAL):
                    await self._record_backend(backend, self._backend_breaker.record_failure, ok=False)
                elif failure_class is None:
                    await self._record_backend(backend, self._backend_breaker.record_success, ok=True)
            if workflow is not None:
                scope = workflow_breaker(workflow)
                breaker = self._workflow_breaker
                if failure_class is FailureClass.PERMANENT:
                    await self._record(scope, breaker.record_failure, ok=False)
                elif failure_class is None:
                    await self._record(scope, breaker.record_success, ok=True)
        except StoreError as exc:
            log.warning("fleet: could not record an outcome on %s: %s", backend, exc)

    async def record_backend(self, name: str, *, ok: bool) -> None:
        """What a health check of ``name`` found (``ok``: not down). Kept apart from the
        outcomes of jobs (``record``): a check that finds the backend up clears only the failed
        checks counted, and closes a half-open breaker only when failed checks alone opened it
        (``CircuitBreaker.record_check_success``)."""
        breaker = self._backend_breaker
        await self._record_backend(name, breaker.record_check_success if ok else breaker.record_check_failure,
                                   ok=ok)

    async def _record_backend(self, name: str, change: Change, *, ok: bool) -> None:
        """Feed ``name``'s breaker, while ``name`` is registered: the prompts a removal stops
        end as failures there, and must neither bring back the breaker of the removed backend
        nor be held against a backend added later under its name."""
        snapshot = self._snapshot()
        if snapshot is not None and name not in snapshot.backends:
            return  # removed (as this process knows): the registry need not be asked
        await self._record(backend_breaker(name), change, ok=ok, registered=name)

    async def _record(self, scope: str, change: Change, *, ok: bool, registered: str | None = None) -> None:
        now = self._clock()
        if ok and change(known := self._breaker_state(scope), now) is known:
            return  # a success that changes nothing (the common case): no write on the hot path
        changed = await self._fleet.breakers.update(scope, lambda s: change(s, now), registered=registered)
        if changed is None:
            return  # ``registered`` is no longer: nothing written
        old, new = changed
        if new.status != old.status:
            log.warning("circuit breaker %s: %s -> %s", scope, old.status.value, new.status.value)
        if (snapshot := self._snapshot()) is not None:
            snapshot.breakers[scope] = new
            self._changed()

    async def note_warm(self, name: str, models: frozenset[str]) -> None:
        """A prompt loading ``models`` succeeded on ``name``: they are loaded there now. Written
        only when that changes what the fleet knows (a run of like jobs writes nothing)."""
        snapshot = self._snapshot()
        if not models or not self._model_affinity or snapshot is None:
            return
        if snapshot.warm.get(name, NO_MODELS) == models:
            return
        try:
            await self._fleet.set_warm(name, models)
        except StoreError as exc:  # a hint only: the next success writes it again
            log.warning("fleet: could not record the models of %s: %s", name, exc)
            return
        snapshot.warm[name] = models
        self._changed()

    async def forget_warm(self, name: str) -> None:
        """``name`` went down: whatever it held may be gone (a restarted ComfyUI holds nothing).
        Written whatever this process's snapshot says (it may be a second behind)."""
        await self._fleet.set_warm(name, NO_MODELS)
        snapshot = self._snapshot()
        if snapshot is not None and snapshot.warm.pop(name, None) is not None:
            self._changed()

    async def rest(self, name: str, until: float) -> None:
        """Send ``name`` nothing until ``until`` (it answered 429/503 with Retry-After), here at
        once and in every other dispatcher with the next snapshot. A rest already known to end
        about then is not written again (a refused submit reports it twice: before its slot is
        given back, and with the attempt's failure)."""
        snapshot = self._snapshot()
        if snapshot is not None and snapshot.resting.get(name, 0.0) >= until - REST_SLACK_S:
            return
        try:
            await self._fleet.rest(name, until)
        except StoreError as exc:
            log.warning("fleet: could not record the Retry-After of %s: %s", name, exc)
        if (snapshot := self._snapshot()) is not None:
            snapshot.resting[name] = until
            self._changed()
