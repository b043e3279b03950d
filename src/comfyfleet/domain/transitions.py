"""The one place where a job changes status.

``apply(job, event, now)`` returns the next record or raises ``InvalidTransition`` naming the
move. The Redis script that persists a change checks the expected status and version, so the
table below is enforced once in Python and guarded atomically in the store.

    event          from                          to
    ------------   ---------------------------   -----------------------------
    Dispatch       queued                        running (phase dispatching, attempt + 1)
    Submitted      running                       running (phase submitted)
    Executing      running                       running (phase executing)
    Collecting     running, canceling            same    (phase collecting)
    Heartbeat      running, canceling            same
    ProgressMade   running, canceling            same    (progress never goes backwards)
    Succeed        running, canceling            succeeded
    Fail           queued, running, canceling    failed
    Retry          running, canceling*           queued  (not_before set; *only without a cancel)
    RequestCancel  queued                        canceled
                   running                       canceling
                   canceling                     canceling (idempotent)
    Canceled       canceling, running            canceled
    Expire         queued, running, canceling    expired

Terminal statuses absorb: every event on a terminal job is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import InvalidTransition
from .job import TERMINAL_STATUSES, Attempt, Job, JobError, JobStatus, Output, Phase, Progress
from .progress import CEILING


@dataclass(frozen=True, slots=True)
class Dispatch:
    attempt: Attempt


@dataclass(frozen=True, slots=True)
class Submitted:
    at: float | None = None  # when ComfyUI accepted the prompt (default: the event's time)


@dataclass(frozen=True, slots=True)
class Executing:
    submitted_at: float | None = None  # ComfyUI's acceptance, when not written before


@dataclass(frozen=True, slots=True)
class Collecting:
    pass


@dataclass(frozen=True, slots=True)
class Heartbeat:
    worker: str


@dataclass(frozen=True, slots=True)
class ProgressMade:
    progress: Progress


@dataclass(frozen=True, slots=True)
class Succeed:
    outputs: tuple[Output, ...]
    progress: Progress | None = None  # the newest snapshot seen, when newer than the record's


@dataclass(frozen=True, slots=True)
class Fail:
    error: JobError


@dataclass(frozen=True, slots=True)
class Retry:
    not_before: float
    failure_class: str
    message: str


@dataclass(frozen=True, slots=True)
class RequestCancel:
    pass


@dataclass(frozen=True, slots=True)
class Canceled:
    pass


@dataclass(frozen=True, slots=True)
class Expire:
    message: str = "deadline exceeded"


Event = (Dispatch | Submitted | Executing | Collecting | Heartbeat | ProgressMade | Succeed | Fail
         | Retry | RequestCancel | Canceled | Expire)

Q, R, C = JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELING
ALLOWED_FROM: dict[type, frozenset[JobStatus]] = {
    Dispatch: frozenset({Q}),
    Submitted: frozenset({R}),
    Executing: frozenset({R}),
    Collecting: frozenset({R, C}),
    Heartbeat: frozenset({R, C}),
    ProgressMade: frozenset({R, C}),
    Succeed: frozenset({R, C}),
    Fail: frozenset({Q, R, C}),
    Retry: frozenset({R}),
    RequestCancel: frozenset({Q, R, C}),
    Canceled: frozenset({R, C}),
    Expire: frozenset({Q, R, C}),
}


def apply(job: Job, event: Event, now: float) -> Job:
    """Return ``job`` after ``event`` at time ``now``; the version is bumped by one."""
    allowed = ALLOWED_FROM[type(event)]
    if job.status not in allowed:
        raise InvalidTransition(
            f"job {job.id}: {type(event).__name__} is not allowed from {job.status.value}"
            + (" (terminal)" if job.status in TERMINAL_STATUSES else "")
        )
    nxt = _apply(job, event, now)
    return nxt.evolve(version=job.version + 1, updated_at=now)


def _end_current(job: Job, now: float, outcome: str, failure_class: str | None = None,
                 message: str | None = None) -> tuple[Attempt | None, tuple[Attempt, ...]]:
    """Close the current attempt and append it to the job's history."""
    if job.current is None:
        return None, job.history


    ended = replace(job.current, ended_at=now, outcome=outcome, failure_class=failure_class,
                    message=message)
    return None, (*job.history, ended)


def _apply(job: Job, event: Event, now: float) -> Job:
    match event:
        case Dispatch(attempt=attempt):
            return job.evolve(status=R, phase=Phase.DISPATCHING, attempt=job.attempt + 1,
                              current=attempt, started_at=job.started_at or now, not_before=None,
                              progress=Progress(), outputs=())
        case Submitted(at=at):
            current = replace(job.current, submitted_at=at or now) if job.current else None
            # Noted late, the prompt may be executing already: the phase stays.
            phase = Phase.SUBMITTED if job.phase in (None, Phase.DISPATCHING) else job.phase
            return job.evolve(phase=phase, current=current)
        case Executing(submitted_at=at):
            current = job.current
            if at is not None and current is not None and current.submitted_at is None:
                current = replace(current, submitted_at=at)
            return job.evolve(phase=Phase.EXECUTING, current=current)
        case Collecting():
            return job.evolve(phase=Phase.COLLECTING)
        case Heartbeat(worker=worker):

            current = replace(job.current, heartbeat_at=now, worker=worker) if job.current else None
            return job.evolve(current=current)
        case ProgressMade(progress=progress):
            return job.evolve(progress=_not_backwards(progress, job.progress))
        case Succeed(outputs=outputs, progress=seen):
            current, history = _end_current(job, now, "succeeded")
            done = seen if seen is not None and seen.nodes_total >= job.progress.nodes_total else job.progress
            final = Progress(value=1.0, nodes_done=max(done.nodes_total, done.nodes_done),
                             nodes_total=done.nodes_total)
            return job.evolve(status=JobStatus.SUCCEEDED, phase=None, current=current,
                              history=history, outputs=outputs, completed_at=now, progress=final)
        case Fail(error=error):
            current, history = _end_current(job, now, "failed", error.failure_class, error.message)
            return job.evolve(status=JobStatus.FAILED, phase=None, current=current, history=history,
                              error=error, completed_at=now)
        case Retry(not_before=not_before, failure_class=failure_class, message=message):
            if job.cancel_requested:
                raise InvalidTransition(f"job {job.id}: Retry after a cancel request")
            current, history = _end_current(job, now, "retried", failure_class, message)
            if history and job.current is not None:
                history = (*history[:-1], replace(history[-1], retry_at=not_before))
            return job.evolve(status=Q, phase=None, current=current, history=history,
                              not_before=not_before)
        case RequestCancel():
            if job.status is Q:
                return job.evolve(status=JobStatus.CANCELED, completed_at=now, cancel_requested=True)
            return job.evolve(status=C, cancel_requested=True)
        case Canceled():
            current, history = _end_current(job, now, "canceled")
            return job.evolve(status=JobStatus.CANCELED, phase=None, current=current,
                              history=history, completed_at=now, cancel_requested=True)
        case Expire(message=message):
            current, history = _end_current(job, now, "expired", None, message)
            return job.evolve(status=JobStatus.EXPIRED, phase=None, current=current,
                              history=history, completed_at=now,
                              error=JobError(code="deadline_exceeded", message=message))
    raise InvalidTransition(f"unknown event {event!r}")  # pragma: no cover


def _not_backwards(progress: Progress, before: Progress) -> Progress:
    """``progress``, never below ``before`` within one attempt (a runner that reattached counts
    from nothing again: ComfyUI does not replay the nodes that ran or were cached), and below
    1.0 until the job succeeds (outputs may still fail to arrive)."""
    if progress.value > CEILING:
        progress = replace(progress, value=CEILING)
    if progress.value < before.value:
        progress = replace(progress, value=before.value)
    if progress.nodes_done < before.nodes_done and progress.nodes_total == before.nodes_total:
        progress = replace(progress, nodes_done=before.nodes_done)
    return progress
