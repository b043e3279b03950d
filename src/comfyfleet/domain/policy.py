"""Retry policy and circuit breakers (pure). Time and randomness are passed in, so tests control them."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base * 2**(n-1))).

    ``jitter=False`` gives the plain exponential delay (1, 2, 4, 8, 16 s with the defaults).
    A backend's ``Retry-After`` is a floor for the delay.
    """

    max_attempts: int = 3
    base_s: float = 1.0
    cap_s: float = 16.0
    jitter: bool = True

    def delay_s(self, attempt: int, *, random_unit: float, retry_after_s: float | None = None) -> float:
        """Delay before the attempt that follows attempt number ``attempt`` (1-based).

        ``random_unit`` is a number in [0, 1) supplied by the caller.
        """
        ceiling = min(self.cap_s, self.base_s * (2 ** max(0, attempt - 1)))
        delay = ceiling * random_unit if self.jitter else ceiling
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.cap_s * 4))
        return delay

    def allows_another(self, attempts_made: int) -> bool:
        return attempts_made < self.max_attempts


@dataclass(slots=True)
class RestartIntensity:
    """Erlang/OTP restart intensity: more than ``max_restarts`` within ``window_s`` -> give up.

    ``record(now)`` notes a restart and answers whether restarting is still allowed.
    """

    max_restarts: int = 5
    window_s: float = 60.0
    _restarts: list[float] | None = None

    def record(self, now: float) -> bool:
        restarts = [t for t in (self._restarts or []) if now - t < self.window_s]
        restarts.append(now)
        self._restarts = restarts
        return len(restarts) <= self.max_restarts

    def backoff_s(self, *, base_s: float = 0.5, cap_s: float = 10.0) -> float:
        recent = len(self._restarts or [])
        return min(cap_s, base_s * (2 ** max(0, recent - 1)))


def jitter_unit(job_id: str, attempt: int) -> float:
    """A uniform number in [0, 1) fixed by (job, attempt): full jitter that a test can recompute.

    Spreads retries of different jobs as a random draw does, while the delay chosen for any
    attempt stays reproducible from the job record alone.
    """
    digest = hashlib.blake2b(f"{job_id}:{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class BreakerStatus(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class OpenedBy(str, enum.Enum):
    """What opened a breaker, which says what may close it again."""

    JOBS = "jobs"  # failures of attempts (some at least): only a probe job that succeeds closes it
    CHECKS = "checks"  # failed health checks alone (the backend was down): a check finding it up may


OPENED_BY_VALUES = frozenset(o.value for o in OpenedBy)
MAX_TRANSITIONS_KEPT = 20


@dataclass(frozen=True, slots=True)
class BreakerState:
    """What a circuit breaker remembers; plain data so it can live in Redis as JSON.

    ``failures`` are the times of the consecutive failures still inside the window, of attempts
    and of health checks alike; ``check_failures`` are those of them that were failed health
    checks (what a health check that finds the backend up clears); ``opened_by`` says, while
    open or half-open, what opened it (None: closed, or stored before it was recorded, taken as
    jobs)."""

    status: BreakerStatus = BreakerStatus.CLOSED
    failures: tuple[float, ...] = ()
    opened_at: float | None = None
    changed_at: float | None = None
    transitions: tuple[tuple[float, str, str], ...] = ()  # (at, from, to), newest last
    check_failures: tuple[float, ...] = ()  # a part of ``failures``
    opened_by: OpenedBy | None = None

    @property
    def pristine(self) -> bool:
        return self.status is BreakerStatus.CLOSED and not self.failures

    def to_dict(self) -> dict:
        data = {"status": self.status.value, "failures": list(self.failures),
                "opened_at": self.opened_at, "changed_at": self.changed_at,
                "transitions": [list(t) for t in self.transitions]}
        if self.check_failures:  # written only when there are some: a workflow's never has
            data["check_failures"] = list(self.check_failures)
        if self.opened_by is not None:
            data["opened_by"] = self.opened_by.value
        return data

    @classmethod
    def from_dict(cls, data: dict | None) -> "BreakerState":
        if not data:
            return cls()
        opened_by = data.get("opened_by")
        return cls(status=BreakerStatus(data.get("status", "closed")),
                   failures=tuple(float(x) for x in data.get("failures") or ()),
                   opened_at=data.get("opened_at"), changed_at=data.get("changed_at"),
                   transitions=tuple((float(a), str(b), str(c)) for a, b, c in data.get("transitions") or ()),
                   check_failures=tuple(float(x) for x in data.get("check_failures") or ()),
                   opened_by=OpenedBy(opened_by) if opened_by in OPENED_BY_VALUES else None)


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreaker:
    """closed -> open after ``failure_threshold`` consecutive failures within ``window_s``;
    open -> half_open once ``cooldown_s`` has passed (a probe may go through);
    half_open -> closed on a success, back to open on a failure. Pure: every method takes the
    state and the time and returns a new state.

    Two kinds of outcome feed it. Jobs (``record_success``, ``record_failure``): a success
    clears every failure counted and closes a half-open breaker. Health checks of a backend
    (``record_check_success``, ``record_check_failure``): their failures count like a job's,
    but a check that finds the backend up clears only the failed checks and closes a half-open
    breaker only when failed checks alone opened it. A backend may answer its checks and fail
    every prompt; its checks must not wipe out what its jobs showed, nor let jobs in again
    without a probe.
    """

    failure_threshold: int = 5
    window_s: float = 60.0
    cooldown_s: float = 30.0

    def current(self, state: BreakerState, now: float) -> BreakerState:
        """The state as of ``now`` (an open breaker whose cool-down ended is half-open)."""
        if state.status is BreakerStatus.OPEN and state.opened_at is not None \
                and now >= state.opened_at + self.cooldown_s:
            return _moved(state, BreakerStatus.HALF_OPEN, now)
        return state

    def allows(self, state: BreakerState, now: float) -> bool:
        return self.current(state, now).status is not BreakerStatus.OPEN

    def forgettable(self, state: BreakerState, now: float) -> bool:
        """Nothing in ``state`` would change a decision any more, so it may be dropped: closed
        with no failure inside the window, or opened and left alone for a cool-down and a
        window since (dropped, it counts failures afresh instead of letting one probe through)."""
        if state.status is BreakerStatus.CLOSED:
            return not any(now - t < self.window_s for t in state.failures)
        last = max((state.opened_at or 0.0, state.changed_at or 0.0, *state.failures))
        return now - last >= self.cooldown_s + self.window_s

    def record_success(self, state: BreakerState, now: float) -> BreakerState:
        """A job succeeded (on the backend, or of the workflow)."""
        state = self.current(state, now)
        if state.status is BreakerStatus.OPEN:
            return state  # a late success of work started before the breaker opened proves little
        if state.status is BreakerStatus.HALF_OPEN:
            return _closed(state, now)
        return replace(state, failures=(), check_failures=()) if state.failures else state

    def record_failure(self, state: BreakerState, now: float) -> BreakerState:
        """A job failed."""
        return self._failed(state, now, OpenedBy.JOBS)

    def record_check_success(self, state: BreakerState, now: float) -> BreakerState:
        """A health check found the backend up. ``state`` itself (the same object) when that
        changes nothing: failures of jobs stay counted, and a breaker they opened waits for
        its probe job."""
        current = self.current(state, now)
        if current.status is BreakerStatus.HALF_OPEN and current.opened_by is OpenedBy.CHECKS:
            return _closed(current, now)
        if current.status is BreakerStatus.CLOSED and current.check_failures:
            return replace(current, failures=_without(current.failures, current.check_failures),
                           check_failures=())
        return state

    def record_check_failure(self, state: BreakerState, now: float) -> BreakerState:
        """A health check found the backend down."""
        return self._failed(state, now, OpenedBy.CHECKS)

    def _failed(self, state: BreakerState, now: float, source: OpenedBy) -> BreakerState:
        state = self.current(state, now)
        if state.status is BreakerStatus.OPEN:
            return state
        checks = (now,) if source is OpenedBy.CHECKS else ()
        if state.status is BreakerStatus.HALF_OPEN:
            # opened by checks still only if checks opened it and a check failed again: one
            # that jobs opened waits for a probe job whatever the checks say meanwhile
            again_checks = source is OpenedBy.CHECKS and state.opened_by is OpenedBy.CHECKS
            opened_by = OpenedBy.CHECKS if again_checks else OpenedBy.JOBS
            return replace(_moved(state, BreakerStatus.OPEN, now), opened_at=now, failures=(now,),
                           check_failures=checks, opened_by=opened_by)
        failures = tuple(t for t in state.failures if now - t < self.window_s) + (now,)
        check_failures = tuple(t for t in state.check_failures if now - t < self.window_s) + checks
        if len(failures) >= self.failure_threshold:
            opened_by = OpenedBy.CHECKS if len(check_failures) == len(failures) else OpenedBy.JOBS
            return replace(_moved(state, BreakerStatus.OPEN, now), opened_at=now, failures=failures,
                           check_failures=check_failures, opened_by=opened_by)
        return replace(state, failures=failures, check_failures=check_failures)


def _closed(state: BreakerState, now: float) -> BreakerState:
    return replace(_moved(state, BreakerStatus.CLOSED, now), failures=(), check_failures=(),
                   opened_at=None, opened_by=None)


def _without(times: tuple[float, ...], taken: tuple[float, ...]) -> tuple[float, ...]:
    """``times`` less one occurrence of each of ``taken`` (the failed checks among all failures;
    two failures at the same moment are the same time, whichever is taken out)."""
    left = list(taken)
    kept = []
    for t in times:
        if t in left:
            left.remove(t)
        else:
            kept.append(t)
    return tuple(kept)


def _moved(state: BreakerState, to: BreakerStatus, now: float) -> BreakerState:
    transitions = (state.transitions + ((now, state.status.value, to.value),))[-MAX_TRANSITIONS_KEPT:]
    return replace(state, status=to, changed_at=now, transitions=transitions)
