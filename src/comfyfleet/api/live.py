"""``GET /jobs/{id}/events``: the Server-Sent Events stream of one job.

The subscription is opened (and confirmed by Redis) before the snapshot is read, so nothing falls
between them; records older than what was already sent are dropped by their version. On connect:
``status``, the latest ``progress``, the latest ``preview`` and the outputs so far. Then live
changes, with identical consecutive progress and previews sent once. On a terminal status every
output not yet sent goes out first, then the terminal ``status``, then the stream closes: the SDK
stops reading at the terminal status. Each keepalive tick also re-reads the record, which catches
a missed event; while the job waits, its ``queue_position`` is re-read every second (jobs ahead
leave without an event on its channel), and a changed position is sent as a ``status`` event.

What waits for a slow client is bounded: the bus's events are taken as they come and only the
newest record and the newest preview are kept until the client takes the next frame (a reader
that falls behind skips intermediate records and previews, never the last one), and a send the
client does not take within ``SEND_DEADLINE_S`` lets the client go. A store that cannot be read
skips that turn (the read is tried again every ``STORE_RETRY_S``); one unreachable for
``STORE_GIVE_UP_S`` ends the stream, like the server's shutdown (``ApiContext.closing``) does, and
like a key revoked (or given another owner or role) while its stream is open: it is looked at
before each turn's frames and at least every ``KEY_RECHECK_S``.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from ..domain.job import Job, JobStatus
from ..errors import JobNotFound, StoreError
from .access import KEY_RECHECK_S, Caller, bearer_token, check_sees, get_caller, owner_of, still_holds
from .context import ApiContext, JobId, get_context
from .errors import error_response
from .schemas import progress_json

log = logging.getLogger(__name__)
router = APIRouter(tags=["jobs"])

STREAMS_RETRY_AFTER_S = 5
POSITION_REFRESH_S = 1.0  # a queued job's position is looked at again this often
SEND_DEADLINE_S = 60.0  # a client that takes no frame for this long is let go
STORE_RETRY_S = 1.0  # a read of the store that failed is tried again this soon
STORE_GIVE_UP_S = 30.0  # the store unreachable this long ends the stream
JOB_EVENT_KINDS = frozenset({"status", "progress", "update"})


@router.get("/jobs/{job_id}/events")
async def job_events(job_id: JobId, request: Request, ctx: ApiContext = Depends(get_context),
                     caller: Caller = Depends(get_caller)) -> Response:
    check_sees(caller, await ctx.services.store.get(job_id))  # 404 before any byte of the stream
    who = owner_of(caller)
    if ctx.streams_full(who):
        return error_response(429, "too_many_streams", "too many open event streams",
                              headers={"Retry-After": str(STREAMS_RETRY_AFTER_S)})
    token = bearer_token(request.headers.get("authorization"))
    stream = JobStream(ctx, job_id, allowed=lambda: still_holds(ctx, token, caller))
    return EventStreamResponse(stream.frames(who), media_type="text/event-stream",
                               headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def frame(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class _Stalled(Exception):
    """The client took no frame within ``SEND_DEADLINE_S``."""


# Set (in the server's task for the request) when a stalled client was let go: the stream was
# left unfinished on purpose, so uvicorn's complaint about an unfinished response is not logged.
_let_go: contextvars.ContextVar[bool] = contextvars.ContextVar("comfyfleet_stream_let_go", default=False)
_UNFINISHED = "ASGI callable returned without completing response."


class _QuietLetGo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == _UNFINISHED and _let_go.get())


logging.getLogger("uvicorn.error").addFilter(_QuietLetGo())


class EventStreamResponse(StreamingResponse):
    """A streaming response whose every send must be taken within ``SEND_DEADLINE_S``.

    A client that stops reading fills the socket's buffers and then the server's send waits;
    past the deadline the response ends there and the server closes the connection (the
    chunked body cannot be finished on a socket nobody drains). The frames' generator is closed
    however the response ends, which ends the stream's subscription and its count."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_in_time(message: Message) -> None:
            try:
                async with asyncio.timeout(SEND_DEADLINE_S):
                    await send(message)
            except TimeoutError:
                raise _Stalled from None

        try:
            await super().__call__(scope, receive, send_in_time)
        except _Stalled:
            log.info("%s: the client took nothing for %.0f s; letting it go",
                     scope.get("path"), SEND_DEADLINE_S)
            _let_go.set(True)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


class JobStream:
    """The frames of one client's stream; remembers what it sent to send each change once."""

    def __init__(self, ctx: ApiContext, job_id: str, *,
                 allowed: Callable[[], bool] = lambda: True) -> None:
        self._ctx = ctx
        self._job_id = job_id
        self._allowed = allowed  # whether the caller's key still holds
        self._version = -1
        self._status: tuple[str, int | None] | None = None
        self._progress: dict[str, Any] | None = None
        self._preview: tuple[str, str] | None = None
        self._outputs: set[str] = set()
        self._node: str | None = None
        self._queued: Job | None = None  # the record while it waits, for re-reading its position
        self.done = False
        # what the bus brought and no frame carries yet: the newest of each kind, in order
        self._record: tuple[int, dict[str, Any]] | None = None  # (arrival, job event)
        self._new_preview: tuple[int, dict[str, Any]] | None = None  # (arrival, preview event)
        self._arrivals = 0
        self._reread = True  # read the record from the store (the snapshot first)
        self._snapshot_sent = False
        self._closed = False  # the server is closing or the bus closed: a last look, then end
        self._wake = asyncio.Event()
        self._store_down_since: float | None = None

    async def frames(self, who: str) -> AsyncIterator[str]:
        """The stream's frames, counted as an open stream of caller ``who``."""
        ctx = self._ctx
        with ctx.stream_of(who):
            try:
                async with ctx.services.events.subscription(self._job_id) as events:  # type: ignore[attr-defined]
                    helpers = [asyncio.create_task(self._take_events(events)),
                               asyncio.create_task(self._watch_closing())]
                    try:
                        async for text in self._run():
                            yield text
                    finally:
                        for task in helpers:
                            task.cancel()
                        await asyncio.gather(*helpers, return_exceptions=True)
            except StoreError as exc:  # no subscription: end the stream (the client may retry)
                log.warning("job %s: event stream ended: %s", self._job_id, exc)

    async def _run(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        keepalive_s = self._ctx.settings.sse_keepalive_s
        keepalive_at = loop.time() + keepalive_s
        position_at = loop.time() + POSITION_REFRESH_S
        while not self.done:
            closed = self._closed
            position_due = loop.time() >= position_at
            if position_due:
                position_at = loop.time() + POSITION_REFRESH_S
            frames = await self._turn(position=position_due)
            if not self._allowed():
                log.info("job %s: event stream ended: its API key was revoked", self._job_id)
                return
            for text in frames:
                yield text
            if self.done or closed:  # closed: what came before the close is sent, and no more
                return
            now = loop.time()
            if self._store_down_since is not None and now - self._store_down_since >= STORE_GIVE_UP_S:
                log.warning("job %s: the job store has been unreachable for %.0f s; ending its event "
                            "stream", self._job_id, now - self._store_down_since)
                return
            wake_at = min(keepalive_at, now + KEY_RECHECK_S)
            if self._queued is not None:
                wake_at = min(wake_at, position_at)  # jobs ahead leave without telling us
            if self._reread:
                wake_at = min(wake_at, now + STORE_RETRY_S)  # a read that failed, tried again
            try:
                async with asyncio.timeout(max(0.0, wake_at - now)):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            if loop.time() >= keepalive_at:
                keepalive_at = loop.time() + keepalive_s
                self._reread = True  # the keepalive tick catches a missed event
                yield ": keepalive\n\n"

    async def _turn(self, *, position: bool) -> list[str]:
        """Frames for what is pending: a read of the record when one is due (or the stream is
        closing), then the bus's newest record and preview in the order they came, then a
        re-read of the position when due."""
        out: list[str] = []
        if self._reread or self._closed:
            self._reread = False
            job = await self._read()
            if job is not None:
                out += await self.on_job(job, snapshot=not self._snapshot_sent)
                self._snapshot_sent = True
        pending = sorted(item for item in (self._record, self._new_preview) if item is not None)
        self._record = self._new_preview = None
        for _, event in pending:
            out += await self.on_event(event)
        if position and self._queued is not None and not self.done:
            out += await self._status_frames(self._queued)
        return out

    async def _read(self) -> Job | None:
        """The stored record, or None when the store cannot be read now (tried again later)."""
        try:
            job = await self._ctx.services.store.get(self._job_id)
        except StoreError as exc:
            self._store_failed(exc, "a read of the record")
            self._reread = True
            return None
        except JobNotFound:  # deleted under the stream: nothing more will come
            self.done = True
            return None
        self._store_down_since = None
        return job

    def _store_failed(self, exc: StoreError, doing: str) -> None:
        if self._store_down_since is None:
            self._store_down_since = asyncio.get_running_loop().time()
            log.info("job %s: event stream skipped %s: %s", self._job_id, doing, exc)

    async def on_event(self, event: dict[str, Any]) -> list[str]:
        kind = event.get("kind")
        if kind in JOB_EVENT_KINDS and isinstance(event.get("job"), dict):
            return await self.on_job(Job.from_dict(event["job"]))
        if kind == "preview":
            return self.on_preview(event)
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
            out.extend(await self._stored_preview(job.id))
        return [*out, *self._output_frames(job)]

    async def _stored_preview(self, job_id: str) -> list[str]:
        try:
            preview = await self._ctx.services.events.get_preview(job_id)  # type: ignore[attr-defined]
        except StoreError as exc:  # the next preview comes as an event
            self._store_failed(exc, "a read of the latest preview")
            return []
        if preview is None:
            return []
        return self.on_preview({"content_type": preview.content_type, "node_id": preview.node_id,
                                "data_base64": base64.b64encode(preview.data).decode()})

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
            try:
                position = await self._ctx.services.store.queue_position(job)
            except StoreError as exc:  # this turn sends no status; the next position tick tries again
                self._store_failed(exc, "a read of the queue position")
                return []
            self._store_down_since = None
        status = (job.status.value, position)
        if status == self._status and not job.is_terminal:
            return []
        self._status = status
        return [frame("status", self._ctx.renderer.status_event(job, position))]

    # -- the helpers ---------------------------------------------------------------------------
    async def _take_events(self, events: AsyncIterator[dict[str, Any]]) -> None:
        """Take the bus's events as they come, keeping only what a frame may still need."""
        try:
            async for event in events:
                self._keep(event)
        finally:
            self._closed = True  # the bus closed
            self._wake.set()

    def _keep(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        self._arrivals += 1
        if kind in JOB_EVENT_KINDS and isinstance(event.get("job"), dict):
            if self._record is None or _version(event) >= _version(self._record[1]):
                self._record = (self._arrivals, event)
        elif kind == "preview":
            self._new_preview = (self._arrivals, event)
        elif kind == "resync":  # events may have been missed: read the record again
            self._reread = True
        else:
            return
        self._wake.set()

    async def _watch_closing(self) -> None:
        await self._ctx.closing.wait()
        self._closed = True
        self._wake.set()


def _version(event: dict[str, Any]) -> int:
    version = event["job"].get("version")
    return version if isinstance(version, int) else -1
