"""The jobs of one process waiting for a capacity slot, and which of them a freed slot wakes.

A release (published by Redis) wakes one waiting job that may use that backend: the first by
priority, then arrival; with ``affinity_wait_s``, a job of the same priority that loads models the
backend holds may go first, but no job is passed over longer than that. A registry change wakes
one job per free slot (by the loads read then), each to look at all its backends; a re-check (a
release message may have been lost) wakes the first. The line decides
only whom to wake: the woken job asks Redis for the slot itself (``Dispatcher.acquire``).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..domain.models import NO_MODELS

RECHECK = "\0recheck"  # woken_by of a waiter woken to look again, not by a release
CHANGED = "\0changed"  # woken_by of a waiter woken by a change of the fleet (room may be anywhere)


@dataclass(eq=False)
class SlotWaiter:
    priority: int
    seq: int
    models: frozenset[str] = NO_MODELS  # what the job loads
    usable: frozenset[str] = frozenset()  # the backends its tags allow, whatever their state
    wants: Any = None  # what ``usable`` is worked out from (the dispatcher's: tags and routing)
    eligible: frozenset[str] = frozenset()  # the backends it may use, as of its last look
    event: asyncio.Event = field(default_factory=asyncio.Event)
    woken_by: str | None = None  # the backend whose release woke it, RECHECK or CHANGED
    passed_over_at: float | None = None  # first time a freed slot went to a later job for its models

    def rearm(self, eligible: frozenset[str]) -> None:
        """About to look (again) for a slot on ``eligible``: forget the last wake-up."""
        self.eligible = eligible
        self.event.clear()
        self.woken_by = None


class SlotLine:
    def __init__(self, *, affinity_wait_s: float, clock: Callable[[], float],
                 warm_of: Callable[[str], frozenset[str]]) -> None:
        """``warm_of(backend)``: the models that backend holds, as this process knows."""
        self._affinity_wait_s = affinity_wait_s
        self._clock = clock
        self._warm_of = warm_of
        self._seq = itertools.count()
        self._waiters: list[SlotWaiter] = []

    def join(self, priority: int, models: frozenset[str], usable: frozenset[str] = frozenset(),
             wants: Any = None) -> SlotWaiter:
        waiter = SlotWaiter(priority, next(self._seq), models=models, usable=usable, wants=wants)
        self._waiters.append(waiter)
        return waiter

    def leave(self, waiter: SlotWaiter) -> None:
        self._waiters.remove(waiter)

    def wake_one(self, name: str, *, skip: SlotWaiter | None = None) -> None:
        """Hand a freed slot on ``name`` to the first waiting job (priority, then arrival); with
        ``affinity_wait_s``, to a job of the same priority that loads models ``name`` holds,
        unless the first one has been passed over that long already (so no job waits more than
        that for the sake of another's models)."""
        ready = [w for w in self._waiters
                 if w is not skip and not w.event.is_set() and name in w.eligible]
        if not ready:
            return
        waiter = min(ready, key=lambda w: (-w.priority, w.seq))
        if self._affinity_wait_s > 0:
            held = self._warm_of(name)
            if held and not waiter.models & held:
                warm = [w for w in ready if w.priority == waiter.priority and w.models & held]
                now = self._clock()
                if warm and now - (waiter.passed_over_at or now) < self._affinity_wait_s:
                    waiter.passed_over_at = waiter.passed_over_at or now
                    waiter = min(warm, key=lambda w: w.seq)
        waiter.woken_by = name
        waiter.event.set()

    def wake_first(self, *, skip: SlotWaiter | None = None) -> None:
        """Wake the first waiting job to look again (a release may have been missed)."""
        ready = [w for w in self._waiters if w is not skip and not w.event.is_set()]
        if ready:
            waiter = min(ready, key=lambda w: (-w.priority, w.seq))
            waiter.woken_by = RECHECK
            waiter.event.set()

    def wake_all(self) -> None:
        """Every waiting job looks at all its backends (room may be anywhere, and how much is
        not known: a lost subscription)."""
        for waiter in self._waiters:
            waiter.woken_by = CHANGED
            waiter.event.set()

    def rework_usable(self, usable_for: Callable[[Any], frozenset[str]]) -> None:
        """The registry changed (a backend added, its tags changed): each waiting job's usable
        backends worked out again from its ``wants``."""
        for waiter in self._waiters:
            if waiter.wants is not None:
                waiter.usable = usable_for(waiter.wants)

    def wake_for_room(self, room: dict[str, int]) -> int:
        """The fleet changed (a capacity raised, a breaker closed, a backend back): room may have
        appeared without a release. For each free slot (``room``: backend -> free slots) one
        waiting job whose tags allow that backend (first by priority, then arrival) looks at
        all its backends; the others sleep on (waking all of them made each ask every backend
        of the fleet, thousands of lookups in Redis for a few free slots). How many it woke."""
        woken = 0
        waiting = sorted((w for w in self._waiters if not w.event.is_set()), key=lambda w: (-w.priority, w.seq))
        for name, free in room.items():
            for waiter in waiting:
                if free <= 0:
                    break
                if not waiter.event.is_set() and name in waiter.usable:
                    waiter.woken_by = CHANGED
                    waiter.event.set()
                    free -= 1
                    woken += 1
        return woken

    def queue_ahead(self, waiter: SlotWaiter) -> bool:
        """Another job of this process already waits for every backend ``waiter`` could use.
        Slots free up only by a release (which wakes a waiting job), a fleet change (which wakes
        them all) or a lost message (the re-check), so on a job's first look none has room."""
        return bool(waiter.eligible) and any(
            other is not waiter and waiter.eligible <= other.eligible for other in self._waiters)
