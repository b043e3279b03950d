"""One job attempt end to end: choose, write ahead, submit, track, collect, classify.

The runner is idempotent: a job that already has an attempt recorded is reconciled with what its
backend knows before anything else is done (reattach, collect, classify, or a new attempt for a
prompt the backend lost), so a worker that dies at any instant costs no job and no double run.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from ..comfy.client import HistoryEntry
from ..comfy.socket import SocketOpening, open_socket
from ..comfy.tracker import Outcome, PromptTracker, TrackerCounters, TrackerSettings
from ..domain import transitions as t
from ..domain.failures import Failure, FailureKind, classify, error_code
from ..domain.job import Attempt, Job, JobError, JobStatus, Output, Phase, Progress
from ..domain.policy import RetryPolicy, jitter_unit
from ..domain.progress import ProgressModel, node_weights_for
from ..errors import BackendError, InvalidTransition, StoreError
from ..ports import BlobStore, JobStore
from ..store.claims import ClaimLost
from ..store.stats import TrackingStats
from .dispatcher import Backend, Dispatcher
from .failure_of import failure_of_error, failure_of_outcome
from .following import follow, stop_prompt
from .job_records import JobRecords
from .outputs import collect_patiently
from .placement import NoPlace, Placement
from .progress_sink import ProgressSink
from .reconcile import Action, BackendView, PromptState, Where, decide, lookup
from .submission import send_prompt
from .tracking_stats import CounterFlusher

Fence = Callable[[], Awaitable[bool]]
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerSettings:
    progress_throttle_s: float = 1.0
    heartbeat_s: float = 5.0  # record heartbeat (slides the active TTL); the claim lease is renewed by the worker
    attach_concurrency: int = 32  # reattaching jobs opening their socket at once
    no_backend_delay_s: float = 1.0
    no_slot_delay_s: float = 0.05  # no slot after waiting in the worker: back to the queue this soon
    cancel_grace_s: float = 5.0
    submitted_shown_after_s: float = 0.25  # not executing this long after POST /prompt: phase submitted
    collecting_shown_after_s: float = 0.25  # outputs still downloading after this: phase collecting
    collect_patience_s: float = 60.0  # a download that failed is tried again this long
    stats_flush_s: float = 1.0  # tracker counters reach the shared totals this soon after a job
    retention_s: float = 7 * 86400.0  # a finished job (and its outputs) is kept this long
    tracker: TrackerSettings = field(default_factory=TrackerSettings)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    retry_by_type: Mapping[str, RetryPolicy] = field(default_factory=dict)
    node_weights: Mapping[str, float] = field(default_factory=dict)  # every job type
    node_weights_by_type: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the worker does with the queue entry: drop it (done) or run it again at ``run_at``."""

    run_at: float | None = None

    @property
    def done(self) -> bool:
        return self.run_at is None


DONE = Verdict()


class Runner:
    def __init__(self, *, store: JobStore, events, blobs: BlobStore, dispatcher: Dispatcher,
                 worker_id: str, settings: RunnerSettings = RunnerSettings(),
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 stats: TrackingStats | None = None, cancels=None, uploads=None,
                 partner_keys: Callable[[str], Awaitable[str | None]] | None = None) -> None:
        """``cancels``: the bus a running job's cancel request arrives on (the cancel channel);
        by default ``events``, where it arrives as the job's status event. ``uploads``: an
        ``UploadStore``, told of each job's outputs so their owner may mint assets from them.
        ``partner_keys(job_id)``: the partner key of a job sent with one (``PartnerKeys.ask``),
        None when no API process holds it any more."""
        self._uploads = uploads
        self._partner_keys = partner_keys
        self._store = store
        self._events = events
        self._cancels = cancels or events
        self._blobs = blobs
        self._dispatcher = dispatcher
        self._worker_id = worker_id
        self._settings = settings
        self._clock = clock
        self._rng = rng or random.Random()
        self.counters: dict[str, TrackerCounters] = defaultdict(TrackerCounters)
        self._attach_gate = asyncio.Semaphore(settings.attach_concurrency)
        self._flusher = (CounterFlusher(stats, self.counters, delay_s=settings.stats_flush_s)
                         if stats is not None else None)
        self._placement = Placement(dispatcher, no_slot_delay_s=settings.no_slot_delay_s,
                                    no_backend_delay_s=settings.no_backend_delay_s, clock=clock)
        self._records = JobRecords(store, clock)  # the running jobs' records, and their writes

    async def run(self, job_id: str, *, view: BackendView | None = None,
                  fence: Fence | None = None, reattached: Job | None = None) -> Verdict:
        """Take the job one step further. ``fence`` answers whether this runner still owns the
        job (its claim); it is asked just before ``POST /prompt``, after the inputs are staged.
        ``view`` shares one ``/queue`` read per backend among many jobs reconciled at once;
        ``reattached`` is the record of a job already reconciled and marked ours by that sweep
        (track it straight away)."""
        try:
            return await self._run(job_id, view=view, fence=fence, reattached=reattached)
        finally:
            self._records.forget(job_id)
            # Whatever ended the run, this process renews the job's slot no longer (one it
            # still held would be renewed for good, even once another runner finished the job).
            self._placement.forget(job_id)

    async def _run(self, job_id: str, *, view: BackendView | None, fence: Fence | None,
                   reattached: Job | None) -> Verdict:
        if reattached is not None and reattached.current is not None:
            backend = self._dispatcher.by_name(reattached.current.backend)
            if backend is not None:
                self._records.hold(reattached)
                return await self._attempt(reattached, backend, submit=False, fence=fence)
        job, workflow = await self._store.get_with_workflow(job_id)
        self._records.hold(job)
        now = self._clock()
        if job.is_terminal:
            return DONE
        if job.status in (JobStatus.RUNNING, JobStatus.CANCELING) and job.current is not None:
            return await self._reconcile(job, view, fence)
        if job.deadline_at is not None and now >= job.deadline_at:
            return await self._expire(job)
        if job.status is JobStatus.CANCELING:
            return await self._cancel(job)
        if job.not_before is not None and now < job.not_before:
            return Verdict(run_at=job.not_before)
        backend = await self._placement.take(job, workflow)
        if isinstance(backend, NoPlace):
            if backend.failure is not None:
                return await self._failed(job, backend.failure)
            return Verdict(run_at=backend.run_at)
        now = self._clock()
        attempt = Attempt(number=job.attempt + 1, backend=backend.name, prompt_id=str(uuid.uuid4()),
                          client_id=str(uuid.uuid4()), worker=self._worker_id, started_at=now)
        # The prompt's socket opens while the attempt is written ahead: both are needed before
        # POST /prompt, neither needs the other.
        opening = SocketOpening(backend.client.ws_url(attempt.client_id), client_id=attempt.client_id,
                                backend=backend.name, settings=self._settings.tracker.socket)
        try:
            job = await self._store.apply(job.id, t.Dispatch(attempt), now, known=job)  # write ahead
            self._records.hold(job)
        except BaseException as exc:
            await opening.discard()
            await self._placement.release(backend.name, job.id)
            if isinstance(exc, InvalidTransition):  # cancelled while it waited for the slot
                ended = await self._store.get(job.id)
                return DONE if ended.is_terminal else Verdict(run_at=self._clock())
            raise
        return await self._attempt(job, backend, submit=True, fence=fence, workflow=workflow,
                                   opening=opening)

    # -- reconcile ---------------------------------------------------------------------------
    async def _reconcile(self, job: Job, view: BackendView | None, fence: Fence | None) -> Verdict:
        """A job with an attempt recorded: ask its backend first, then act (reconcile.decide)."""
        current = job.current
        assert current is not None
        backend = self._dispatcher.by_name(current.backend)
        if backend is None:
            state = PromptState(Where.NO_BACKEND, message=f"backend {current.backend} is gone")
        elif view is not None:
            state = await view.state(backend.name, current.prompt_id)
        else:
            state = await lookup(backend.client, current.prompt_id)
        action = decide(job, state, self._clock())
        match action:
            case Action.EXPIRE:
                return await self._expire(job)
            case Action.CANCEL:
                return await self._cancel(job)
            case Action.COLLECT | Action.CLASSIFY:
                assert backend is not None and state.entry is not None
                # the prompt is over there: free the slot the runner that died held for it
                await self._placement.release(current.backend, job.id)
                return await self._conclude(job.id, backend, Outcome(state.entry.outcome, state.entry))
            case Action.NEW_ATTEMPT:
                return await self._failed(job, Failure(FailureKind.PROMPT_LOST,
                                                       state.message or "the backend lost the prompt"))
        assert backend is not None
        if action is Action.SUBMIT and not await self._placement.take_unsent(backend.name, job.id):
            return await self._no_room_for_unsent(job, backend.name)
        job = await self._apply(job.id, t.Heartbeat(self._worker_id)) or job  # reattached: ours now
        return await self._attempt(job, backend, submit=action is Action.SUBMIT, fence=fence)

    async def _no_room_for_unsent(self, job: Job, backend: str) -> Verdict:
        """The attempt's prompt was never sent and its backend has no free slot now: wait for
        one, unless that backend takes no new work any more (then the attempt moves on)."""
        record = self._dispatcher.snapshot.backends.get(backend) if self._dispatcher.snapshot else None
        if record is None or record.state != "active":
            return await self._failed(job, Failure(
                FailureKind.PROMPT_LOST, f"the prompt was never sent, and {backend} takes no new work"))
        return Verdict(run_at=self._clock() + self._settings.no_backend_delay_s)

    # -- one attempt -------------------------------------------------------------------------
    async def _attempt(self, job: Job, backend: Backend, *, submit: bool,
                       fence: Fence | None = None, workflow: dict | None = None,
                       opening: SocketOpening | None = None) -> Verdict:
        """Submit (or reattach to) the job's current attempt and follow it to its end.
        ``opening``: the attempt's socket, already being opened."""
        try:
            return await self._attempt_with(job, backend, submit=submit, fence=fence,
                                            workflow=workflow, opening=opening)
        finally:
            if opening is not None:
                await opening.discard()  # not taken: the attempt ended before it connected

    async def _attempt_with(self, job: Job, backend: Backend, *, submit: bool, fence: Fence | None,
                            workflow: dict | None, opening: SocketOpening | None) -> Verdict:
        current = job.current
        assert current is not None
        if submit:
            if workflow is None:
                workflow = await self._store.workflow(job.id)
            await self._placement.keep(backend, job, workflow)
        else:  # a start-up sweep may reattach thousands: a few at a time
            async with self._attach_gate:
                workflow = workflow or await self._store.workflow(job.id)
                await self._placement.keep(backend, job, workflow)  # a reattached job keeps its slot
        sink = ProgressSink(self._store, self._events, job.id, apply=lambda e: self._apply(job.id, e),
                            executing=job.phase is Phase.EXECUTING,
                            throttle_s=self._settings.progress_throttle_s, clock=self._clock)
        tracker = PromptTracker(backend.client, prompt_id=current.prompt_id,
                                client_id=current.client_id,
                                model=ProgressModel(workflow, weights=node_weights_for(
                                    job.type, every_type=self._settings.node_weights,
                                    by_type=self._settings.node_weights_by_type)),
                                listener=sink, settings=self._settings.tracker,
                                counters=self.counters[backend.name], rng=self._rng,
                                opener=opening.opener if opening is not None else open_socket)
        heartbeat = asyncio.create_task(self._heartbeat(job.id))
        handed_back = False
        release_after = False  # the prompt failed there: its slot is freed once that is recorded
        outcome: Outcome | None = None
        try:
            if submit:
                await tracker.connect()  # before POST /prompt, so no event is missed
                failure = await self._submit(job, backend, workflow, fence, tracker)
                if failure is not None:
                    await tracker.close()
                    await self._placement.rest_if_asked(backend.name, failure)
                    try:  # the breakers learn of it before the slot is anyone else's
                        return await self._failed(job, failure)
                    finally:
                        await self._placement.release(backend.name, job.id)
                outcome = await self._follow(job, backend, tracker)
            else:
                # Reattach. Sockets open a few at a time (a start-up sweep may bring thousands);
                # a prompt that ended before ours opened sent its events to nobody: ask history.
                async with self._attach_gate:
                    await tracker.connect()
                    entry = await self._history_now(backend, job.current.prompt_id)
                outcome = Outcome(entry.outcome, entry) if entry else await self._follow(job, backend, tracker)
        except (asyncio.CancelledError, ClaimLost):
            handed_back = True  # the prompt may still run there: its slot stays with the job
            raise
        finally:
            heartbeat.cancel()
            await tracker.close()
            try:
                if not handed_back:
                    await self._records.settle_accepted(job.id)
                await sink.close(superseded=outcome is not None and outcome.kind == "success")
            finally:
                self._flush_soon()
                if outcome is not None and outcome.kind == "success":
                    # the prompt is over on its backend: free the slot before collecting
                    await self._placement.release(backend.name, job.id)
                elif outcome is not None and outcome.kind != "expired":
                    # Over there too, but the failure is recorded first: a breaker that opens
                    # (or a half-open one whose probe this was) must turn away the job the
                    # freed slot wakes.
                    release_after = True
                else:
                    # Handed back, cancelled, past its deadline or cut short by an error: the
                    # prompt may still run there. Not renewed from here; the runner that takes
                    # the job on holds the slot, one that stops the prompt frees it, and
                    # otherwise it expires.
                    self._placement.forget(job.id)
        try:
            if outcome is None:
                return await self._cancel(await self._store.get(job.id))
            return await self._conclude(job.id, backend, outcome, progress=sink.latest)
        finally:
            if release_after:
                await self._placement.release(backend.name, job.id)
            self._placement.done(job.id)

    async def _history_now(self, backend: Backend, prompt_id: str) -> HistoryEntry | None:
        try:
            return await backend.client.history(prompt_id)
        except BackendError:
            return None  # the tracker finds out

    async def _submit(self, job: Job, backend: Backend, workflow: dict, fence: Fence | None,
                      tracker: PromptTracker) -> Failure | None:
        """POST the attempt's prompt; the failure, or None once ComfyUI has it (or may have it:
        then the tracker finds out). Raises ``ClaimLost`` when another runner owns the job."""
        key = None
        if job.has_partner_key:
            key = await self._partner_keys(job.id) if self._partner_keys is not None else None
            if key is None:
                return Failure(FailureKind.PARTNER_KEY_LOST,
                               "the job's partner key (extra_data.api_key_comfy_org) was held only "
                               "by the API process that accepted the job, which no longer has it "
                               "(it restarted); submit the job again")
        sent = await send_prompt(job, backend.client, self._blobs, workflow, fence=fence, partner_key=key)
        if sent.failure is not None:
            return sent.failure
        if sent.unsure:
            tracker.probe_soon()
        else:
            self._records.note_accepted(job.id, self._clock(),
                                        show_after_s=self._settings.submitted_shown_after_s)
        return None

    async def _follow(self, job: Job, backend: Backend, tracker: PromptTracker) -> Outcome | None:
        """Track until the outcome, the deadline, or a cancel (then None after interrupting)."""
        return await follow(tracker, job, backend.client, store=self._store, cancels=self._cancels,
                            clock=self._clock, cancel_grace_s=self._settings.cancel_grace_s)

    # -- endings -----------------------------------------------------------------------------
    async def _conclude(self, job_id: str, backend: Backend, outcome: Outcome,
                        progress: Progress | None = None) -> Verdict:
        if outcome.kind == "success":  # whatever moved meanwhile (a cancel), success stands
            job = self._records.newest(job_id) or await self._store.get(job_id)
            collecting = asyncio.create_task(collect_patiently(
                backend.client, self._blobs, job_id=job_id, outputs=outcome.history.outputs,
                patience_s=self._settings.collect_patience_s, clock=self._clock))
            try:
                # The collecting phase is written only when it lasts: most outputs are in hand
                # sooner, and the success write follows at once.
                await asyncio.wait({collecting}, timeout=self._settings.collecting_shown_after_s)
                if not collecting.done():
                    await self._apply(job_id, t.Collecting())
                outputs = await collecting
            except BackendError as exc:
                return await self._failed(await self._store.get(job_id), failure_of_error(exc))
            finally:
                collecting.cancel()
            await self._apply(job_id, t.Succeed(outputs, progress))
            await self._placement.succeeded(backend.name, job)
            await self._index_outputs(job, outputs)
            return DONE
        job = await self._store.get(job_id)
        if outcome.kind == "expired":  # interrupted once: now seen stopped
            return await self._expire(job)
        if job.status is JobStatus.CANCELING:
            await self._apply(job_id, t.Canceled())
            return DONE
        return await self._failed(job, failure_of_outcome(outcome))

    async def _index_outputs(self, job: Job, outputs: tuple[Output, ...]) -> None:
        """Let the owner mint from these outputs' bytes by hash while the job is kept. The job
        has succeeded already: a store that fails here costs only that shortcut."""
        if self._uploads is None or not outputs or self._settings.retention_s <= 0:
            return
        try:
            await self._uploads.remember_outputs(job.owner or "", outputs,
                                                 self._clock() + self._settings.retention_s)
        except StoreError as exc:
            log.warning("job %s: its outputs' hashes were not indexed: %s", job.id, exc)

    async def _failed(self, job: Job, failure: Failure) -> Verdict:
        failure_class = classify(failure)
        job = await self._store.get(job.id)
        if job.is_terminal:
            self._placement.done(job.id)
            return DONE
        if job.status is JobStatus.CANCELING:
            self._placement.done(job.id)
            await self._apply(job.id, t.Canceled())
            return DONE
        workflow_allows = await self._placement.failed(job, failure, failure_class)
        retryable = failure_class.retryable and workflow_allows
        retry = self._settings.retry_by_type.get(job.type, self._settings.retry)
        if retryable and job.status is JobStatus.RUNNING and job.attempt < job.max_attempts:
            delay_s = retry.delay_s(job.attempt, random_unit=jitter_unit(job.id, job.attempt),
                                    retry_after_s=failure.retry_after_s)
            now = self._clock()  # the attempt ends now; the next may start delay_s later
            try:
                await self._store.apply(job.id, t.Retry(now + delay_s, failure_class.value, failure.message), now)
            except InvalidTransition:
                pass
            return Verdict(run_at=now + delay_s)
        error = JobError(code=error_code(failure), message=failure.message,
                         failure_class=failure_class.value, node_id=failure.node_id,
                         class_type=failure.node_type, exception_type=failure.exception_type,
                         traceback=list(failure.traceback) or None,
                         node_errors=failure.node_errors or None)
        await self._apply(job.id, t.Fail(error))
        return DONE

    async def give_up(self, job_id: str, message: str) -> None:
        """Fail the job for good: running it keeps raising an error nobody foresaw (a bug, or a
        record or an answer unlike any expected), and retrying it until its deadline, or past it,
        would only hide that. Its prompt, if any, is stopped and its slot freed."""
        job = await self._store.get(job_id)
        if job.is_terminal:
            return
        if job.current is not None:
            await self._stop_prompt(job)
        failure = Failure(FailureKind.INTERNAL, message)
        error = JobError(code=error_code(failure), message=message, failure_class=classify(failure).value)
        try:
            await self._store.apply(job_id, t.Fail(error), self._clock())
        except InvalidTransition:
            pass  # it ended meanwhile
        finally:
            self._placement.done(job_id)

    async def _cancel(self, job: Job) -> Verdict:
        if job.current is not None:
            await self._stop_prompt(job)
        await self._apply(job.id, t.Canceled())
        return DONE

    async def _expire(self, job: Job) -> Verdict:
        if job.current is not None:
            await self._stop_prompt(job)
        await self._apply(job.id, t.Expire("deadline exceeded"))
        return DONE

    async def _stop_prompt(self, job: Job) -> None:
        """Stop the job's prompt (see it gone, within bounds) and free its slot (held still if a
        runner that died, or this one, has not let it go; freeing is idempotent)."""
        assert job.current is not None
        backend = self._dispatcher.by_name(job.current.backend)
        if backend is not None:
            await stop_prompt(backend.client, job.current.prompt_id)
        await self._placement.release(job.current.backend, job.id)

    async def _heartbeat(self, job_id: str) -> None:
        while True:
            # Jittered (never longer than heartbeat_s), so jobs started together do not beat
            # together: a burst of writes would hold up every job's live progress.
            await asyncio.sleep(self._settings.heartbeat_s * (0.5 + self._rng.random() / 2))
            try:
                await self._apply(job_id, t.Heartbeat(self._worker_id))
            except Exception:  # noqa: BLE001 - a missed heartbeat is retried at the next beat
                pass
            self._flush_soon()

    def _flush_soon(self) -> None:
        if self._flusher is not None:
            self._flusher.flush_soon()

    async def close(self) -> None:
        """Flush what is still counted (a worker that stops)."""
        if self._flusher is not None:
            await self._flusher.close()

    async def _apply(self, job_id: str, event: t.Event) -> Job | None:
        return await self._records.apply(job_id, event)
