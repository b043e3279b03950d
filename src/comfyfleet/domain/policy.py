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


MAX_TRANSITIONS_KEPT = 20


@dataclass(frozen=True, slots=True)
class BreakerState:
    """What a circuit breaker remembers; plain data so it can live in Redis as JSON."""

    status: BreakerStatus = BreakerStatus.CLOSED
    failures: tuple[float, ...] = ()  # times of consecutive failures still inside the window
    opened_at: float | None = None
    changed_at: float | None = None
    transitions: tuple[tuple[float, str, str], ...] = ()  # (at, from, to), newest last

    @property
    def pristine(self) -> bool:
        return self.status is BreakerStatus.CLOSED and not self.failures

    def to_dict(self) -> dict:
        return {"status": self.status.value, "failures": list(self.failures),
                "opened_at": self.opened_at, "changed_at": self.changed_at,
                "transitions": [list(t) for t in self.transitions]}

    @classmethod
    def from_dict(cls, data: dict | None) -> "BreakerState":
        if not data:
            return cls()
        return cls(status=BreakerStatus(data.get("status", "closed")),
                   failures=tuple(float(x) for x in data.get("failures") or ()),
                   opened_at=data.get("opened_at"), changed_at=data.get("changed_at"),
                   transitions=tuple((float(a), str(b), str(c)) for a, b, c in data.get("transitions") or ()))


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreaker:
    """closed -> open after ``failure_threshold`` consecutive failures within ``window_s``;
    open -> half_open once ``cooldown_s`` has passed (a probe may go through);
    half_open -> closed on a success, back to open on a failure. A success while closed clears
    the failure count. Pure: every method takes the state and the time and returns a new state.
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
        state = self.current(state, now)
        if state.status is BreakerStatus.OPEN:
            return state  # a late success of work started before the breaker opened proves little
        if state.status is BreakerStatus.HALF_OPEN:
            return replace(_moved(state, BreakerStatus.CLOSED, now), failures=(), opened_at=None)
        return replace(state, failures=()) if state.failures else state

    def record_failure(self, state: BreakerState, now: float) -> BreakerState:
        state = self.current(state, now)
        if state.status is BreakerStatus.OPEN:
            return state
        if state.status is BreakerStatus.HALF_OPEN:
            return replace(_moved(state, BreakerStatus.OPEN, now), opened_at=now, failures=(now,))
        failures = tuple(t for t in state.failures if now - t < self.window_s) + (now,)
        if len(failures) >= self.failure_threshold:
            return replace(_moved(state, BreakerStatus.OPEN, now), opened_at=now, failures=failures)
        return replace(state, failures=failures)


def _moved(state: BreakerState, to: BreakerStatus, now: float) -> BreakerState:
    transitions = (state.transitions + ((now, state.status.value, to.value),))[-MAX_TRANSITIONS_KEPT:]
    return replace(state, status=to, changed_at=now, transitions=transitions)
