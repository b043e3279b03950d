"""What the whole deployment looks like right now, read from Redis for ``GET /metrics``,
``GET /health`` (``fleet_health``) and ``GET /api/v2/stats`` (``registered_tracking``).

Every figure is fleet-wide, whichever process is asked: job counters kept exact by the store's
scripts (``store/job_counters.py``), jobs per status, live workers, each backend as
``comfyfleet backends`` shows it, open workflow breakers, and the trackers' counters.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from ..store.claims import Claims
from ..store.job_counters import JobCounters
from ..store.stats import TrackingStats
from .fleet_admin import FleetAdmin


@dataclass(frozen=True, slots=True)
class Readings:
    job_counters: dict[tuple[str, ...], int] = field(default_factory=dict)
    jobs_by_status: dict[str, int] = field(default_factory=dict)
    workers: int = 0
    backends: list[dict[str, Any]] = field(default_factory=list)  # FleetAdmin.list() entries
    workflow_breakers: list[dict[str, Any]] = field(default_factory=list)  # with failures seen
    tracking: dict[str, dict[str, int]] = field(default_factory=dict)  # backend -> counter -> total


async def read_deployment(services: Any) -> Readings:
    """One reading, its parts read concurrently."""
    admin = FleetAdmin(services)
    counters, by_status, workers, backends, breakers, tracking = await asyncio.gather(
        JobCounters(services.redis, services.keys).totals(),
        services.store.count_by_status(),
        Claims(services.redis, services.keys).live_workers(),
        admin.list(),
        admin.workflow_breakers(),
        TrackingStats(services.redis, services.keys).totals())
    return Readings(job_counters=counters, jobs_by_status=by_status, workers=len(workers),
                    backends=backends, workflow_breakers=breakers, tracking=tracking)


async def registered_tracking(services: Any) -> dict:
    """The tracking totals of the backends registered now (a removed one's are kept, not shown:
    its workers may still add to them as its last prompts end)."""
    totals, snapshot = await asyncio.gather(TrackingStats(services.redis, services.keys).totals(),
                                            services.fleet.snapshot())
    return {name: counters for name, counters in totals.items() if name in snapshot.backends}


async def fleet_health(services: Any) -> dict:
    """Each backend's state, load and breaker, the live workers, and what keeps the service
    from running jobs (``problems``: then the status is ``degraded``)."""
    backends, workers = await asyncio.gather(
        FleetAdmin(services).list(),
        Claims(services.redis, services.keys).live_worker_ids())
    listed = [{"name": b["name"], "url": b["url"], "state": b["state"], "load": b["load"],
               "capacity": b["capacity"], "breaker": b["breaker"]["status"]} for b in backends]
    usable = [b for b in listed if b["state"] in ("unknown", "healthy", "degraded") and b["breaker"] != "open"]
    problems = []
    if not workers:
        problems.append("no worker is running: jobs wait in the queue")
    if not usable:
        problems.append("no backend can take work")
    elif len(usable) < len(listed):
        problems.append(f"{len(listed) - len(usable)} of {len(listed)} backends cannot take work")
    return {"status": "degraded" if problems else "healthy", "problems": problems,
            "workers": len(workers), "backends": listed}
