"""API test fixtures: the app over the real store and bus (real Valkey), and a recording enqueue.

    blobs        LocalBlobStore in a temp dir
    enqueued     list the fake ``enqueue`` appends each job to (our own seam, not Redis)
    api          (app, ApiServices, ApiSettings) built from the fixtures
    client       httpx.AsyncClient over ASGITransport (buffers whole responses)
    live_server  the same app on a real uvicorn at 127.0.0.1:<free port>, for streaming tests
    make_finished_job(outputs=[(bytes, content_type, name)]) -> a succeeded Job with outputs
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import httpx
from blake3 import blake3
import pytest
import uvicorn

from comfyfleet.api.app import ApiServices, ApiSettings, create_app
from comfyfleet.api.schemas import asset_id_for
from comfyfleet.blobs import LocalBlobStore
from comfyfleet.domain import transitions as t
from comfyfleet.domain.job import Job, JobStatus, Output
from comfyfleet.store.partner_keys import PartnerKeyHolder
from comfyfleet.store.uploads import UploadStore

from api_helpers import BASE_URL, WORKFLOW, attempt


@dataclass
class Api:
    app: Any
    services: ApiServices
    settings: ApiSettings


@pytest.fixture
def blobs(tmp_path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


@pytest.fixture
def enqueued() -> list[Job]:
    return []


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
async def partner_keys(redis, keys) -> AsyncIterator[PartnerKeyHolder]:  # type: ignore[no-untyped-def]
    holder = PartnerKeyHolder(redis, keys)
    try:
        yield holder
    finally:
        await holder.close()


@pytest.fixture
def api(store, event_bus, blobs, enqueued, settings_overrides, redis, keys, partner_keys) -> Api:  # type: ignore[no-untyped-def]
    async def enqueue(job: Job) -> None:
        enqueued.append(job)

    services = ApiServices(store=store, events=event_bus, blobs=blobs, enqueue=enqueue,
                           health=_health, uploads=UploadStore(redis, keys), partner_keys=partner_keys)
    settings = ApiSettings(public_base_url=BASE_URL, **settings_overrides)
    return Api(create_app(services, settings), services, settings)


async def _health() -> dict[str, Any]:
    return {"backends": {"sim-1": "healthy"}}


@pytest.fixture
async def client(api: Api) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=api.app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
        yield http


@pytest.fixture
async def live_server(api: Api) -> AsyncIterator[str]:
    """Base URL of a real uvicorn serving the app (SSE needs a streaming transport)."""
    config = uvicorn.Config(api.app, host="127.0.0.1", port=0, log_level="warning",
                            lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.fixture
def make_finished_job(store, blobs) -> Callable[..., Any]:  # type: ignore[no-untyped-def]
    """Store a job, run it through Dispatch and Succeed with real blobs; return the Job."""

    async def make(files: list[tuple[bytes, str, str]], *, created_at: float = 1_700_000_000.0,
                   metadata: dict[str, str] | None = None, owner: str = "anonymous") -> Job:
        job = Job(id=str(uuid4()), status=JobStatus.QUEUED, created_at=created_at,
                  deadline_at=created_at + 600, metadata=metadata or {}, owner=owner)
        await store.create(job, WORKFLOW)
        await store.apply(job.id, t.Dispatch(attempt()), created_at + 1)
        outputs = []
        for index, (data, content_type, name) in enumerate(files):
            digest = await blobs.put(data, content_type=content_type)
            outputs.append(Output(id=asset_id_for(job.id, index), node_id="9", name=name,
                                  type="image", content_type=content_type,
                                  size_bytes=len(data), hash=digest,
                                  blake3=f"blake3:{blake3(data).hexdigest()}"))
        return await store.apply(job.id, t.Succeed(tuple(outputs)), created_at + 5)

    return make
