"""Where a job's attempt runs, and what its outcome teaches the breakers.

The runner asks ``take`` for a capacity slot before each new attempt and hands the slot back
(``release``) once the prompt is over, or lets it go unreleased (``forget``) when the job is handed
to another runner while its prompt still runs. Outcomes go to ``succeeded`` and ``failed``, which
feed the backend's breaker and the breaker of the job's workflow shape (type + fingerprint) for
the job's owner. The scope of each job's workflow breaker, and the models it loads, are kept here
while the job runs; a success tells the dispatcher which models its backend holds now.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ..domain.breaker_scopes import WorkflowScope
from ..domain.failures import Failure, FailureClass, FailureKind, lacks_node_class
from ..domain.fingerprint import node_classes_of, workflow_fingerprint
from ..domain.job import Job
from ..domain.models import NO_MODELS, models_of
from .dispatcher import Backend, Dispatcher


@dataclass(frozen=True, slots=True)
class NoPlace:
    """No slot for this attempt: ``failure`` ends the attempt (no backend can ever take the job,
    or its workflow's breaker is open); otherwise look again at ``run_at``."""

    failure: Failure | None = None
    run_at: float | None = None


NOT_THE_WORKFLOWS = frozenset({FailureKind.PROMPT_REJECTED, FailureKind.INVALID_INPUT})
# A backend answering these with Retry-After is sent nothing (by any worker) until then: each job
# sent there meanwhile would only collect the same answer and spend an attempt on it.
RESTING_STATUSES = frozenset({429, 503})
MAX_REST_S = 300.0


def workflow_scope(job: Job, workflow: dict) -> WorkflowScope:
    """The breaker a job's runs feed: its type and graph shape, for its owner alone."""
    return WorkflowScope(job.type, workflow_fingerprint(workflow), job.owner)


class Placement:
    def __init__(self, dispatcher: Dispatcher, *, no_slot_delay_s: float, no_backend_delay_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._dispatcher = dispatcher
        self._no_slot_delay_s = no_slot_delay_s
        self._no_backend_delay_s = no_backend_delay_s
        self._clock = clock
        self._workflows: dict[str, WorkflowScope] = {}  # job id -> its workflow breaker, while it runs
        self._models: dict[str, frozenset[str]] = {}  # job id -> models it loads, while it runs

    async def take(self, job: Job, workflow: dict) -> Backend | NoPlace:
        """A slot on a backend for the job's next attempt. None free anywhere: look again
        shortly, without spending an attempt. A retry landing on the backend that just failed
        it checks that backend's health first."""
        scope = self._workflows[job.id] = workflow_scope(job, workflow)
        models = self._models[job.id] = models_of(workflow)
        choice = await self._dispatcher.acquire(job, workflow=scope, models=models,
                                                classes=node_classes_of(workflow))
        if choice.fatal:
            return NoPlace(failure=Failure(FailureKind.NO_BACKEND, choice.fatal))
        if choice.circuit_open:
            return NoPlace(failure=Failure(FailureKind.CIRCUIT_OPEN, choice.circuit_open))
        if choice.backend is None:
            self.done(job.id)
            return NoPlace(run_at=self._clock() + self._no_slot_delay_s)
        name = choice.backend.name
        last = job.history[-1] if job.history else None
        health = self._dispatcher.health
        if last is not None and last.backend == name and health is not None:
            try:
                down = (await health.check(name)).state == "down"
            except BaseException:
                await self.release(name, job.id)
                raise
            if down:
                await self.release(name, job.id)
                self.done(job.id)
                return NoPlace(run_at=self._clock() + self._no_backend_delay_s)
        return choice.backend

    async def keep(self, backend: Backend, job: Job, workflow: dict) -> None:
        """The job runs on ``backend`` (a new attempt or a reattached one): its slot is held.
        A new attempt's workflow scope and models were worked out by ``take`` already."""
        if job.id not in self._workflows:
            self._workflows[job.id] = workflow_scope(job, workflow)
            self._models[job.id] = models_of(workflow)
        await self._dispatcher.hold(backend.name, job.id)

    async def take_unsent(self, backend: str, job_id: str) -> bool:
        """A slot on ``backend`` for an attempt written there whose prompt was never sent: it
        needs room like any new prompt (a blind hold would put one over capacity)."""
        return await self._dispatcher.take_on(backend, job_id)

    async def release(self, backend: str, job_id: str) -> None:
        """The prompt is over there: free the slot (idempotent)."""
        await self._dispatcher.release(backend, job_id)

    def forget(self, job_id: str) -> None:
        """Handed back while the prompt runs: the next runner holds the slot on."""
        self._dispatcher.forget(job_id)

    def done(self, job_id: str) -> None:
        self._workflows.pop(job_id, None)
        self._models.pop(job_id, None)

    async def succeeded(self, backend: str, job: Job) -> None:
        await self._dispatcher.memory.record(backend, self._workflows.pop(job.id, None), None)
        await self._dispatcher.memory.note_warm(backend, self._models.pop(job.id, NO_MODELS))

    async def rest_if_asked(self, backend: str, failure: Failure) -> None:
        """A 429/503 with Retry-After: send ``backend`` nothing until then. Called before its
        slot is given back, so no job waiting for the slot is sent there."""
        if failure.retry_after_s and failure.status_code in RESTING_STATUSES:
            await self._dispatcher.memory.rest(backend, self._clock() + min(failure.retry_after_s, MAX_REST_S))

    async def failed(self, job: Job, failure: Failure, failure_class: FailureClass) -> bool:
        """Feed the breakers, then free the slot (the job the freed slot wakes must find a
        breaker that opened, or the half-open one this failure was the probe of, open again);
        False when the workflow's breaker has opened, so this workflow stops burning retries."""
        workflow = self._workflows.pop(job.id, None)
        self._models.pop(job.id, None)
        if failure.kind in (FailureKind.NO_BACKEND, FailureKind.CIRCUIT_OPEN):
            return True  # no attempt ran: nothing to free and nothing learned
        backend = job.current.backend if job.current is not None else None
        try:
            if backend is not None:
                await self.rest_if_asked(backend, failure)
            if failure.kind is FailureKind.PARTNER_KEY_LOST:
                return True  # nothing was sent: neither the backend nor the workflow is to blame
            if backend is not None and lacks_node_class(failure):
                # its catalog was not known yet, or is out of date (a node removed): read it again
                await self._dispatcher.forget_node_catalog(backend)
            if failure.kind in NOT_THE_WORKFLOWS:
                # Refused before it ran, for this job's own values or inputs (the fingerprint is
                # the graph's shape only): counted, a run of one mistake closed the workflow.
                # Nothing ran, so nothing burns while the same mistake is made again.
                workflow = None
            await self._dispatcher.memory.record(backend, workflow, failure_class)
            return workflow is None or self._dispatcher.memory.workflow_allows(workflow)
        finally:
            if backend is not None:
                await self.release(backend, job.id)
