"""``WS /api/v2/live``: one multiplexed WebSocket for dashboards — every job the caller may see,
their live progress and (for an admin) the fleet.

Authentication: an ``Authorization: Bearer`` header, or (browsers cannot set one on a WebSocket)
a first message ``{"type": "auth", "token": "<key>"}`` within ``AUTH_TIMEOUT_S`` (the sockets
waiting for theirs count as one caller's streams: past ``max_streams`` of them, a new one gets
``too_many_streams`` and close code 1013). A missing or unknown key gets an ``error`` message and close code 4401, and so does an open feed whose key
is revoked (or given another owner or role): it is looked at before each message and at least
every ``KEY_RECHECK_S``.

Server messages, JSON text frames:

    snapshot  {at, role, owner, counts|null, jobs: [Job], fleet: {backends, workflow_breakers}|null}
              first, and again whenever events may have been missed (replace everything);
              counts (jobs by status, of the whole deployment) and fleet are an admin's only
    job       {job: Job}                      a job was created or changed
    progress  {job_id, progress}              a running job's progress moved
    fleet     {at, counts, backends, workflow_breakers}   admin only; when changed, at most 1/s
    error     {code, message}                 then the socket closes

The subscription is confirmed before the snapshot is read, so no change falls between them.
Changes are coalesced: at most one ``job`` or ``progress`` message per job every ``FLUSH_S``
(the latest), so a burst of hundreds of progress events a second costs the browser a few frames.

A store that cannot be read skips that turn: a fleet read waits for the next second, a resync
snapshot is tried again every ``STORE_RETRY_S``; unreachable for ``STORE_GIVE_UP_S`` (or at the
first snapshot), the feed ends with ``store_unavailable`` and close code 1013 and the page
reconnects. At the server's shutdown it closes with 1001. A client that takes no frame within
``SEND_DEADLINE_S`` (its socket's buffers full) is let go: the feed ends without a closing
message, which could only wait behind the frames it is not taking.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import suppress
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from ..domain.job import Job, JobStatus
from ..errors import ComfyFleetError, StoreError
from .access import KEY_RECHECK_S, Caller, bearer_token, identify, owner_of, still_holds
from .context import ApiContext
from .schemas import progress_json

log = logging.getLogger(__name__)
router = APIRouter()

AUTH_TIMEOUT_S = 10.0
FLUSH_S = 0.1
FLEET_EVERY_S = 1.0
ACTIVE_LIMIT = 200
FINISHED_LIMIT = 50
ACTIVE = [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELING]
FINISHED = [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED]
CLOSE_UNAUTHORIZED = 4401
CLOSE_TRY_LATER = 1013
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011
STORE_RETRY_S = 1.0  # a resync snapshot that failed is tried again this soon
STORE_GIVE_UP_S = 30.0  # the store unreachable this long ends the feed (the page reconnects)
MAX_CLIENT_MESSAGE = 4096
# The count of sockets waiting for their auth message (up to AUTH_TIMEOUT_S each): held to the
# limits of one caller, so unanswered sockets cannot tie up the process's connections.
AWAITING_AUTH = "\x00awaiting-auth"
SEND_DEADLINE_S = 60.0  # a client that takes no frame for this long is let go
CLOSE_WAIT_S = 5.0  # at shutdown, how long the closing message may wait to be taken


class _Stalled(Exception):
    """The client took no frame within ``SEND_DEADLINE_S``."""


class _KeyRevoked(Exception):
    """The key the feed was opened with no longer names its caller."""


@router.websocket("/live")
async def live_feed(websocket: WebSocket) -> None:
    ctx: ApiContext = websocket.app.state.api
    await websocket.accept()
    if _awaits_auth_message(websocket, ctx) and ctx.streams_full(AWAITING_AUTH):
        await refuse(websocket, CLOSE_TRY_LATER, "too_many_streams", "too many sockets awaiting authentication")
        return
    caller, token = await authenticate(websocket, ctx)
    if caller is None:
        await refuse(websocket, CLOSE_UNAUTHORIZED, "unauthorized",
                     "a valid API key is required: send {\"type\": \"auth\", \"token\": \"<key>\"} first")
        return
    who = owner_of(caller)
    if ctx.streams_full(who):
        await refuse(websocket, CLOSE_TRY_LATER, "too_many_streams", "too many open event streams")
        return
    with ctx.stream_of(who):
        try:
            await LiveFeed(ctx, caller, websocket, token=token).run()
        except (WebSocketDisconnect, OSError):
            pass  # the client went away, mid-send or between messages
        except _KeyRevoked:
            await refuse(websocket, CLOSE_UNAUTHORIZED, "unauthorized", "the API key was revoked")
        except _Stalled:
            log.info("live feed: the client took nothing for %.0f s; letting it go", SEND_DEADLINE_S)
        except RuntimeError as exc:  # Starlette: a send after the socket closed under us
            log.debug("live feed ended: %s", exc)
        except ComfyFleetError as exc:  # the store went away: say so, the page reconnects
            log.warning("live feed ended: %s", exc)
            await refuse(websocket, CLOSE_TRY_LATER, "store_unavailable", "the job store is unavailable")
        except Exception:  # a bug: logged once, and the page is told rather than cut
            log.exception("live feed failed unexpectedly")
            await refuse(websocket, CLOSE_INTERNAL_ERROR, "upstream_error", "the live feed failed")


async def authenticate(websocket: WebSocket, ctx: ApiContext) -> tuple[Caller | None, str | None]:
    """The caller (None: refused) and the key it came with."""
    header = bearer_token(websocket.headers.get("authorization"))
    if not _awaits_auth_message(websocket, ctx):
        return identify(ctx, header), header
    try:
        with ctx.stream_of(AWAITING_AUTH):  # a socket yet to say who it is counts too
            async with asyncio.timeout(AUTH_TIMEOUT_S):
                raw = await websocket.receive_text()
    except (TimeoutError, WebSocketDisconnect, KeyError, RuntimeError):
        return None, None  # KeyError/RuntimeError: a binary frame or a socket already closing
    message = _json_object(raw)
    token = message.get("token") if message.get("type") == "auth" else None
    if not isinstance(token, str) or not token:
        return None, None
    return identify(ctx, token), token


def _awaits_auth_message(websocket: WebSocket, ctx: ApiContext) -> bool:
    """Whether the caller must say who it is in a first message (keys on, no header)."""
    return ctx.services.keys is not None and bearer_token(websocket.headers.get("authorization")) is None


async def refuse(websocket: WebSocket, close_code: int, code: str, message: str) -> None:
    with suppress(WebSocketDisconnect, RuntimeError, OSError):
        if websocket.client_state is WebSocketState.CONNECTED:
            await websocket.send_text(json.dumps({"type": "error", "code": code, "message": message}))
            await websocket.close(close_code)


def _json_object(raw: str) -> dict[str, Any]:
    if len(raw) > MAX_CLIENT_MESSAGE:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class LiveFeed:
    """One dashboard's socket: a snapshot, then coalesced changes until either side goes."""

    def __init__(self, ctx: ApiContext, caller: Caller, websocket: WebSocket, *,
                 token: str | None) -> None:
        self._ctx = ctx
        self._caller = caller
        self._token = token
        self._socket = websocket
        self._changed: dict[str, Job] = {}  # job id -> its newest record with a status/other change
        self._moved: dict[str, Job] = {}  # job id -> its newest record where only progress moved
        self._wake = asyncio.Event()
        self._resync = False
        self._fleet_sent: str | None = None
        self._store_down_since: float | None = None  # loop time of the first failed read

    async def run(self) -> None:
        async with self._ctx.services.events.subscription(None) as events:  # type: ignore[attr-defined]
            await self._send_snapshot()
            tasks = [asyncio.create_task(self._collect(events)),
                     asyncio.create_task(self._read_client()),
                     asyncio.create_task(self._flush_loop()),
                     asyncio.create_task(self._ctx.closing.wait())]
            if self._caller.admin:
                tasks.append(asyncio.create_task(self._fleet_loop()))
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            if self._ctx.closing.is_set():  # a client not reading is not waited for long
                with suppress(WebSocketDisconnect, RuntimeError, OSError, TimeoutError):
                    async with asyncio.timeout(CLOSE_WAIT_S):
                        await self._socket.close(CLOSE_GOING_AWAY)

    # -- what goes out -------------------------------------------------------------------------
    def _check_key(self) -> None:
        if not still_holds(self._ctx, self._token, self._caller):
            raise _KeyRevoked

    async def _send(self, message: dict[str, Any]) -> None:
        self._check_key()
        try:
            async with asyncio.timeout(SEND_DEADLINE_S):
                await self._socket.send_text(json.dumps(message, separators=(",", ":")))
        except TimeoutError:
            raise _Stalled from None

    async def _send_snapshot(self) -> None:
        store, caller = self._ctx.services.store, self._caller
        owner = None if caller.admin else caller.owner
        active = await store.list(statuses=ACTIVE, owner=owner, limit=ACTIVE_LIMIT)
        finished = await store.list(statuses=FINISHED, owner=owner, limit=FINISHED_LIMIT)
        fleet = await self._fleet() if caller.admin else None
        self._fleet_sent = _fingerprint(fleet)
        await self._send({"type": "snapshot", "at": time.time(),
                          "role": "admin" if caller.admin else "user", "owner": caller.owner,
                          "counts": fleet["counts"] if fleet else None,
                          "jobs": [self._render(job) for job in (*active, *finished)],
                          "fleet": fleet and {"backends": fleet["backends"],
                                              "workflow_breakers": fleet["workflow_breakers"]}})

    async def _fleet(self) -> dict[str, Any]:
        return await self._ctx.fleet_now.get()  # shared by every admin's feed

    def _render(self, job: Job) -> dict[str, Any]:
        return self._ctx.renderer.job(job)

    # -- the tasks -----------------------------------------------------------------------------
    async def _collect(self, events: Any) -> None:
        async for event in events:
            kind = event.get("kind")
            if kind == "resync":
                self._resync = True
            elif kind in ("status", "update", "progress") and isinstance(event.get("job"), dict):
                job = Job.from_dict(event["job"])
                if not self._caller.sees(job):
                    continue
                pending = self._moved if kind == "progress" else self._changed
                known = pending.get(job.id)
                if known is None or known.version <= job.version:
                    pending[job.id] = job
            else:
                continue
            self._wake.set()

    async def _flush_loop(self) -> None:
        while True:
            try:  # a resync that failed is tried again without waiting for another change
                async with asyncio.timeout(STORE_RETRY_S if self._resync else KEY_RECHECK_S):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            self._check_key()  # a quiet feed also ends soon after its key was revoked
            if self._resync:
                self._resync = False
                self._changed.clear()
                self._moved.clear()
                try:
                    await self._send_snapshot()
                    self._store_ok()
                except StoreError as exc:  # the changes that come meanwhile still go out
                    self._store_failed(exc, "a resync snapshot")
                    self._resync = True
            changed, self._changed = self._changed, {}
            moved, self._moved = self._moved, {}
            for job in changed.values():
                await self._send({"type": "job", "job": self._render(job)})
            for job_id, job in moved.items():
                newer = changed.get(job_id)
                if newer is None or newer.version < job.version:
                    await self._send({"type": "progress", "job_id": job_id,
                                      "progress": progress_json(job.progress)})
            await asyncio.sleep(FLUSH_S)

    async def _fleet_loop(self) -> None:
        while True:
            await asyncio.sleep(FLEET_EVERY_S)
            try:
                fleet = await self._fleet()
            except StoreError as exc:  # this second's message is skipped
                self._store_failed(exc, "a read of the fleet")
                continue
            self._store_ok()
            fingerprint = _fingerprint(fleet)
            if fingerprint != self._fleet_sent:
                self._fleet_sent = fingerprint
                await self._send({"type": "fleet", "at": time.time(), **fleet})  # type: ignore[dict-item]

    def _store_ok(self) -> None:
        self._store_down_since = None

    def _store_failed(self, exc: StoreError, doing: str) -> None:
        """Skip this turn; raise ``exc`` (ending the feed) once the store has been unreachable
        for ``STORE_GIVE_UP_S``."""
        now = asyncio.get_running_loop().time()
        if self._store_down_since is None:
            self._store_down_since = now
            log.info("live feed skipped %s: %s", doing, exc)
        elif now - self._store_down_since >= STORE_GIVE_UP_S:
            raise exc

    async def _read_client(self) -> None:
        """Client messages carry nothing after authentication; reading notices a disconnect."""
        while True:
            message = await self._socket.receive()
            if message["type"] == "websocket.disconnect":
                return


def _fingerprint(fleet: dict[str, Any] | None) -> str | None:
    """What a change of the fleet is judged by: everything but when health was last checked."""
    if fleet is None:
        return None
    steady = [{**b, "health": {k: v for k, v in b.get("health", {}).items()
                               if k not in ("checked_at", "latency_ms")}}
              for b in fleet["backends"]]
    return json.dumps([fleet["counts"], steady, fleet["workflow_breakers"]], sort_keys=True, default=str)
