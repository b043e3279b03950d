"""What every route needs: the settings, the services and the shared renderer.

``ApiSettings`` and ``ApiServices`` are re-exported by ``api.app``; they live here so the route
modules can depend on them without importing the app factory.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, Request

from ..domain.job import BUILTIN_JOB_TYPES, Job, JobStatus
from ..errors import ConfigError, JobNotFound
from ..ports import BlobStore, EventBus, JobStore
from .schemas import Renderer, is_job_id
from .shared_read import SharedRead

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_DEADLINE_S = 600.0
RETENTION_S = 7 * 24 * 3600.0
FLEET_MAX_AGE_S = 0.5  # the fleet as every live feed sees it: read at most twice a second


@dataclass(frozen=True, kw_only=True)
class ApiSettings:
    public_base_url: str  # absolute, e.g. "https://fleet.example.com"; every response URL uses it
    max_workflow_bytes: int = 5_000_000
    max_workflow_nodes: int = 2000
    sse_keepalive_s: float = 15.0
    max_streams: int = 256  # open event streams and live feeds of one caller
    max_streams_total: int = 4096  # of all callers of this process
    retention_s: float = RETENTION_S  # how long a finished job (and its outputs) is kept
    job_types: tuple[str, ...] = BUILTIN_JOB_TYPES  # metadata.type values accepted
    max_upload_bytes: int = 100 * 1024 * 1024  # one input asset (ComfyUI's own default limit)
    max_active_per_owner: int = 0  # queued/running jobs an owner may have (0: no limit; a key may set its own)
    upload_expires_s: float = 7 * 24 * 3600.0  # an upload's life when the client names none

    def __post_init__(self) -> None:
        parts = urlsplit(self.public_base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise ConfigError(f"public_base_url must be an absolute http(s) URL with no query; "
                              f"got {self.public_base_url!r}")
        object.__setattr__(self, "public_base_url", self.public_base_url.rstrip("/"))
        if self.max_streams < 1 or self.max_streams_total < 1 or self.sse_keepalive_s <= 0:
            raise ConfigError("max_streams and max_streams_total must be >= 1 and sse_keepalive_s > 0")


async def _no_cancel(_: Job) -> None:
    return None


async def _no_health() -> dict[str, Any]:
    return {}


async def _no_stats() -> dict[str, Any]:
    return {}


def default_job_defaults(_: str) -> dict[str, Any]:
    return {"max_attempts": DEFAULT_MAX_ATTEMPTS, "deadline_s": DEFAULT_DEADLINE_S}


@dataclass
class ApiServices:
    store: JobStore
    events: EventBus
    blobs: BlobStore
    enqueue: Callable[[Job], Awaitable[None]]  # puts a new job on the work queue
    cancel_running: Callable[[Job], Awaitable[None]] = _no_cancel  # asks its worker to interrupt
    health: Callable[[], Awaitable[dict[str, Any]]] = _no_health  # extra health info (backends)
    job_defaults: Callable[[str], dict[str, Any]] = default_job_defaults  # per job type
    clock: Callable[[], float] = time.time
    tracking_stats: Callable[[], Awaitable[dict[str, Any]]] = _no_stats  # per backend counters
    fleet: Any = None  # a FleetAdmin: the /backends routes (absent: they answer 404)
    readings: Callable[[], Awaitable[Any]] | None = None  # the deployment now, for /metrics (absent: 404)
    keys: Callable[[str], Any] | None = None  # API key -> its KeyHolder or None (absent: an open server)
    uploads: Any = None  # an UploadStore: input assets (absent: uploads answer 404)
    partner_keys: Any = None  # a PartnerKeyHolder (absent: a job sent with a partner key is refused)
    # (workflow, job type, metadata): raises invalid_workflow when no backend the job may use has
    # one of its node classes (absent: not checked)
    check_node_classes: Callable[[dict[str, Any], str, dict[str, Any]], Awaitable[None]] | None = None


@dataclass
class ApiContext:
    settings: ApiSettings
    services: ApiServices
    renderer: Renderer
    open_streams: Counter[str] = field(default_factory=Counter)  # caller (owner_of) -> open
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    fleet_now: SharedRead[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.fleet_now = SharedRead(self._read_fleet, max_age_s=FLEET_MAX_AGE_S)

    def streams_full(self, who: str) -> bool:
        """Whether caller ``who`` may open no more event streams (its own limit, or the
        process's)."""
        return (self.open_streams[who] >= self.settings.max_streams
                or self.open_streams.total() >= self.settings.max_streams_total)

    @contextlib.contextmanager
    def stream_of(self, who: str) -> Iterator[None]:
        """Count an open stream of ``who`` while inside."""
        self.open_streams[who] += 1
        try:
            yield
        finally:
            self.open_streams[who] -= 1
            if self.open_streams[who] <= 0:
                del self.open_streams[who]

    async def _read_fleet(self) -> dict[str, Any]:
        """Job counts by status, the backends and the workflow breakers (none without a fleet)."""
        admin = self.services.fleet
        counts = await self.services.store.count_by_status()  # type: ignore[attr-defined]
        if admin is None:
            return {"counts": counts, "backends": [], "workflow_breakers": []}
        return {"counts": counts, "backends": await admin.list(),
                "workflow_breakers": await admin.workflow_breakers()}

    async def render_job(self, job: Job) -> dict[str, Any]:
        queued = job.status is JobStatus.QUEUED
        position = await self.services.store.queue_position(job) if queued else None
        return self.renderer.job(job, queue_position=position)


def get_context(request: Request) -> ApiContext:
    return request.app.state.api


def job_id_path(job_id: str) -> str:
    """The ``{job_id}`` path parameter: an id this server never issues is a 404 at once."""
    if not is_job_id(job_id):
        raise JobNotFound(f"job {job_id} not found")
    return job_id


JobId = Annotated[str, Depends(job_id_path)]
