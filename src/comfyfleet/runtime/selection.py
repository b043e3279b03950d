"""Which backends may take a job attempt, in order of preference (pure).

Among the backends whose admin state is active, whose health is not down, whose breaker allows and
whose tags include the job's required tags (``metadata.tags`` plus the job type's configured
tags): healthy before degraded, and backends this job has not failed on before those it has;
inside a tier the least loaded wins (the slot script in Redis decides that, over the candidates
in the order given here) and equals take turns, after the backends already holding the models
the job loads (``domain/models.py``: the warmest first, then those with nothing loaded). A job
type may name ordered fallback groups (tag sets): the next group is used when the first has no
backend that can take the job, or when the job has already failed ``fallback_after`` times in it.

A :class:`Roster` is the fleet as the planner needs it, computed once per registry snapshot (and
again when a breaker changes or an open breaker's cool-down ends), so that planning one job does
not re-derive every backend's health and breaker state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..domain.breaker_scopes import backend_breaker
from ..domain.job import Job
from ..domain.models import NO_MODELS, warmth
from ..domain.policy import BreakerState, BreakerStatus, CircuitBreaker
from ..store.fleet import BackendHealth, FleetSnapshot

DISPATCHABLE_HEALTH = ("healthy", "unknown", "degraded")
_UNKNOWN_HEALTH = BackendHealth()
_CLOSED = BreakerState()
_NO_TAGS: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class TypeRouting:
    """Where jobs of one type may run: required tags and ordered fallback groups of tags."""

    tags: tuple[str, ...] = ()
    fallback: tuple[tuple[str, ...], ...] = ()
    fallback_after: int = 2  # failures of a job inside a group before it moves to the next


@dataclass(frozen=True, slots=True)
class Plan:
    candidates: tuple[tuple[str, int, int], ...]  # (name, slot limit, tier)
    fatal: str | None = None


@dataclass(frozen=True, slots=True)
class Roster:
    """Every registered backend's tags, and which of them may take work now.

    ``usable``: name -> (slot limit, health tier), in registry order; a half-open breaker allows
    one probe (limit 1), a degraded backend is tier 1; one resting after a Retry-After is left
    out. ``valid_until``: the time an open breaker's cool-down or a rest ends (the roster must be
    made again then)."""

    tags: dict[str, frozenset[str]]
    usable: dict[str, tuple[int, int]]
    valid_until: float
    warm: dict[str, frozenset[str]] = field(default_factory=dict)  # name -> models it holds
    # (groups, required tags) -> candidate tiers of a job with no failed attempt: most jobs
    # share one entry, so planning them is a rotation
    _first_tries: dict = field(default_factory=dict, compare=False, repr=False)
    _allowed: dict = field(default_factory=dict, compare=False, repr=False)  # (need, groups) -> names

    @classmethod
    def of(cls, snapshot: FleetSnapshot, breaker: CircuitBreaker, now: float) -> "Roster":
        usable: dict[str, tuple[int, int]] = {}
        valid_until = float("inf")
        for name, record in snapshot.backends.items():
            if record.state != "active":
                continue
            health = snapshot.health.get(name, _UNKNOWN_HEALTH).state
            if health not in DISPATCHABLE_HEALTH:
                continue
            resting_until = snapshot.resting.get(name, 0.0)
            if resting_until > now:  # it answered 429/503 with a Retry-After that has not passed
                valid_until = min(valid_until, resting_until)
                continue
            state = breaker.current(snapshot.breakers.get(backend_breaker(name), _CLOSED), now)
            if state.status is BreakerStatus.OPEN:
                if state.opened_at is not None:
                    valid_until = min(valid_until, state.opened_at + breaker.cooldown_s)
                continue
            limit = 1 if state.status is BreakerStatus.HALF_OPEN else record.capacity
            usable[name] = (limit, 1 if health == "degraded" else 0)
        tags = {name: frozenset(record.tags) if record.tags else _NO_TAGS
                for name, record in snapshot.backends.items()}
        warm = {name: models for name, models in snapshot.warm.items() if models and name in usable}
        return cls(tags=tags, usable=usable, valid_until=valid_until, warm=warm)

    def plan(self, job: Job, routing: TypeRouting, *, turn: int,
             models: frozenset[str] = NO_MODELS) -> Plan:
        """The ordered candidates for one job (``turn`` rotates equals) that loads ``models``."""
        need = required_tags(job, routing)
        key = (routing.fallback, need)
        tiers = None if job.history else self._first_tries.get(key)
        if tiers is None:
            tiers = self._tiers(job, need, routing)
            if isinstance(tiers, Plan):
                return tiers
            if not job.history:
                self._first_tries[key] = tiers
        candidates: list[tuple[str, int, int]] = []
        for tier, members in tiers:
            shift = turn % len(members)
            members = members[shift:] + members[:shift]
            if models and self.warm:  # stable: equals keep their turn
                members = sorted(members, key=lambda m: warmth(models, self.warm.get(m[0], NO_MODELS)))
            candidates += [(name, limit, tier) for name, limit in members]
        return Plan(tuple(candidates))

    def allowed(self, need: frozenset[str], routing: TypeRouting) -> frozenset[str]:
        """Every registered backend whose tags let it take a job needing the tags ``need`` (see
        ``required_tags``) in some group, whatever its state now (one down or drained may come
        back)."""
        key = (need, routing.fallback)
        names = self._allowed.get(key)
        if names is None:
            groups = [frozenset(g) for g in routing.fallback] or [_NO_TAGS]
            names = self._allowed[key] = frozenset(name for group in groups for name in self._matching(need | group))
        return names

    def holding(self, models: frozenset[str]) -> frozenset[str]:
        """Names of the usable backends holding any of ``models``."""
        return frozenset(name for name, warm in self.warm.items() if warm & models)

    def _tiers(self, job: Job, need: frozenset[str], routing: TypeRouting
               ) -> list[tuple[int, list[tuple[str, int]]]] | Plan:
        """The candidates by tier, best tier first (a fatal Plan when none can ever match)."""
        groups = [frozenset(g) for g in routing.fallback] or [_NO_TAGS]
        matching = [self._matching(need | g) for g in groups]
        if not any(matching):
            wanted = " or ".join(sorted(",".join(sorted(need | g)) or "(none)" for g in groups))
            if not self.tags:
                return Plan((), fatal="no backend is configured")
            return Plan((), fatal=f"no backend has the tags this job needs ({wanted})")
        order = list(range(len(groups)))
        failed_on: list[str] = []
        too_small: set[str] = set()
        if job.history:
            failed_on = [a.backend for a in job.history if a.outcome == "retried"]
            # A backend that ran out of memory on this job is left out while any other could take it.
            too_small = {a.backend for a in job.history if a.failure_class == "recoverable"}
            if all(name in too_small for group in matching for name in group):
                too_small = set()
            worn = [i for i in order[:-1]
                    if sum(1 for b in failed_on if b in matching[i]) >= routing.fallback_after]
            order = [i for i in order if i not in worn] + worn
        usable: list[tuple[int, str, int, int]] = []  # (rank, name, limit, health tier)
        seen: set[str] = set()
        for rank, index in enumerate(order):
            for name in matching[index]:
                slot = self.usable.get(name)
                if slot is None or name in seen or name in too_small:
                    continue
                usable.append((rank, name, slot[0], slot[1]))
                seen.add(name)
        # A retry waits for a backend it has not failed on, while any such backend can take it.
        untried = [u for u in usable if u[1] not in failed_on] if failed_on else usable
        tiers: dict[int, list[tuple[str, int]]] = {}
        for rank, name, limit, health_tier in (untried or usable):
            tiers.setdefault(rank * 2 + health_tier, []).append((name, limit))
        return sorted(tiers.items())

    def _matching(self, need: frozenset[str]) -> dict[str, None]:
        """Names of the backends with every tag in ``need`` (registry order; any state)."""
        return {name: None for name, tags in self.tags.items() if need <= tags}


def required_tags(job: Job, routing: TypeRouting) -> frozenset[str]:
    return tags_wanted(job.metadata, routing)


def tags_wanted(metadata: Mapping[str, Any] | None, routing: TypeRouting) -> frozenset[str]:
    """The tags a job's backend must have: its type's, and those its ``metadata.tags`` names."""
    from_metadata = (metadata or {}).get("tags") or ""
    if not from_metadata and not routing.tags:
        return _NO_TAGS
    return frozenset(t.strip() for t in from_metadata.split(",") if t.strip()) | set(routing.tags)


def plan_candidates(job: Job, snapshot: FleetSnapshot, *, routing: TypeRouting,
                    breaker: CircuitBreaker, now: float, turn: int,
                    models: frozenset[str] = NO_MODELS) -> Plan:
    """The ordered candidates for one job, from a snapshot at ``now``."""
    return Roster.of(snapshot, breaker, now).plan(job, routing, turn=turn, models=models)
