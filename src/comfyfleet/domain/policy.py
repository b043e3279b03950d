"""Retry policy (pure). Time and randomness are passed in, so tests switch them off."""

from __future__ import annotations

from dataclasses import dataclass


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
