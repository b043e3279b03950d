"""``GET /jobs/{id}/events``: the Server-Sent Events stream of one job.

The subscription is opened (and confirmed by Redis) before the snapshot is read, so nothing falls
between them; records older than what was already sent are dropped by their version. On connect:
``status``, the latest ``progress``, the latest ``preview`` and the outputs so far. Then live
changes, with identical consecutive progress and previews sent once. On a terminal status every
output not yet sent goes out first, then the terminal ``status``, then the stream closes: the SDK
stops reading at the terminal status. Each keepalive tick also re-reads the record, which catches
a missed event; while the job waits, its ``queue_position`` is re-read every second (jobs ahead
leave without an event on its channel), and a changed position is sent as a ``status`` event.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Response
from fastapi.responses import StreamingResponse

from ..domain.job import Job, JobStatus
from .access import Caller, check_sees, get_caller, owner_of
from .context import ApiContext, JobId, get_context
from .errors import error_response
from .schemas import progress_json

router = APIRouter(tags=["jobs"])

STREAMS_RETRY_AFTER_S = 5
POSITION_REFRESH_S = 1.0  # a queued job's position is looked at again this often
JOB_EVENT_KINDS = frozenset({"status", "progress", "update"})
_CLOSED = object()


@router.get("/jobs/{job_id}/events")
async def job_events(job_id: JobId, ctx: ApiContext = Depends(get_context),
                     caller: Caller = Depends(get_caller)) -> Response:
    check_sees(caller, await ctx.services.store.get(job_id))  # 404 before any byte of the stream
    who = owner_of(caller)
    if ctx.streams_full(who):
        return error_response(429, "too_many_streams", "too many open event streams",
                              headers={"Retry-After": str(STREAMS_RETRY_AFTER_S)})
    return StreamingResponse(JobStream(ctx, job_id).frames(who), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def frame(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class JobStream:
    """The frames of one client's stream; remembers what it sent to send each change once."""

    def __init__(self, ctx: ApiContext, job_id: str) -> None:
        self._ctx = ctx
        self._job_id = job_id
        self._version = -1
        self._status: tuple[str, int | None] | None = None
        self._progress: dict[str, Any] | None = None
        self._preview: tuple[str, str] | None = None
        self._outputs: set[str] = set()
        self._node: str | None = None
        self._queued: Job | None = None  # the record while it waits, for re-reading its position
        self.done = False

    async def frames(self, who: str) -> AsyncIterator[str]:
        """The stream's frames, counted as an open stream of caller ``who``."""
        ctx = self._ctx
        with ctx.stream_of(who):
            async with ctx.services.events.subscription(self._job_id) as events:  # type: ignore[attr-defined]
                inbox: asyncio.Queue[Any] = asyncio.Queue()
                helpers = [asyncio.create_task(self._pump(events, inbox)),
                           asyncio.create_task(self._watch_closing(inbox))]
                try:
                    async for text in self._run(inbox):
                        yield text
                finally:
                    for task in helpers:
                        task.cancel()
                    await asyncio.gather(*helpers, return_exceptions=True)

    async def _run(self, inbox: asyncio.Queue[Any]) -> AsyncIterator[str]:
        store, keepalive_s = self._ctx.services.store, self._ctx.settings.sse_keepalive_s
        for text in await self.on_job(await store.get(self._job_id), snapshot=True):
            yield text
        loop = asyncio.get_running_loop()
        keepalive_at = loop.time() + keepalive_s
        while not self.done:
            wait_s = keepalive_at - loop.time()
            if self._status is not None and self._status[0] == JobStatus.QUEUED.value:
                wait_s = min(wait_s, POSITION_REFRESH_S)  # jobs ahead leave without telling us
            try:
                async with asyncio.timeout(max(0.0, wait_s)):
                    event = await inbox.get()
            except TimeoutError:
                if loop.time() >= keepalive_at:
                    keepalive_at = loop.time() + keepalive_s
                    yield ": keepalive\n\n"
                    event = {"kind": "resync"}
                else:  # only the position can have moved unseen: no need to read the record
                    event = {"kind": "position"}
            if event is _CLOSED:
                for text in await self.on_job(await store.get(self._job_id)):
                    yield text
                return
            for text in await self.on_event(event):
                yield text

    async def on_event(self, event: dict[str, Any]) -> list[str]:
        kind = event.get("kind")
        if kind in JOB_EVENT_KINDS and isinstance(event.get("job"), dict):
            return await self.on_job(Job.from_dict(event["job"]))
        if kind == "preview":
            return self.on_preview(event)
        if kind == "resync":
            return await self.on_job(await self._ctx.services.store.get(self._job_id))
        if kind == "position" and self._queued is not None:
            return await self._status_frames(self._queued)
        return []

    async def on_job(self, job: Job, *, snapshot: bool = False) -> list[str]:
        """Frames for a (possibly) newer record; ``snapshot`` adds the latest preview."""
        if self.done or job.version < self._version:
            return []
        self._version = job.version
        self._queued = job if job.status is JobStatus.QUEUED else None
        self._node = job.progress.current_node
        out = self._progress_frames(job)
        if job.is_terminal:
            self.done = True
            return [*out, *self._output_frames(job), *await self._status_frames(job)]
        out = [*await self._status_frames(job), *out]
        if snapshot:
            preview = await self._ctx.services.events.get_preview(job.id)  # type: ignore[attr-defined]
            if preview is not None:
                out.extend(self.on_preview({"content_type": preview.content_type,
                                            "node_id": preview.node_id,
                                            "data_base64": base64.b64encode(preview.data).decode()}))
        return [*out, *self._output_frames(job)]

    def on_preview(self, event: dict[str, Any]) -> list[str]:
        data = event.get("data_base64") or event.get("data")
        content_type = event.get("content_type") or "image/jpeg"
        if self.done or not isinstance(data, str) or (content_type, data) == self._preview:
            return []
        self._preview = (content_type, data)
        node_id = event.get("node_id") or self._node or ""
        return [frame("preview", {"node_id": node_id, "content_type": content_type,
                                  "data_base64": data})]

    def _progress_frames(self, job: Job) -> list[str]:
        progress = progress_json(job.progress)
        if progress is None or progress == self._progress:
            return []
        self._progress = progress
        return [frame("progress", progress)]

    def _output_frames(self, job: Job) -> list[str]:
        out = []
        for output in job.outputs:
            if output.id not in self._outputs:
                self._outputs.add(output.id)
                out.append(frame("output", self._ctx.renderer.output(job, output)))
        return out

    async def _status_frames(self, job: Job) -> list[str]:
        position = None
        if job.status is JobStatus.QUEUED:
            position = await self._ctx.services.store.queue_position(job)
        status = (job.status.value, position)
        if status == self._status and not job.is_terminal:
            return []
        self._status = status
        return [frame("status", self._ctx.renderer.status_event(job, position))]

    @staticmethod
    async def _pump(events: AsyncIterator[dict[str, Any]], inbox: asyncio.Queue[Any]) -> None:
        try:
            async for event in events:
                inbox.put_nowait(event)
        finally:
            inbox.put_nowait(_CLOSED)

    async def _watch_closing(self, inbox: asyncio.Queue[Any]) -> None:
        await self._ctx.closing.wait()
        inbox.put_nowait(_CLOSED)
