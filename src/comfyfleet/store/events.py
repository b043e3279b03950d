"""EventBus: job events over ONE Redis pub/sub subscription, fanned out in-process.

Every job event goes to the single channel ``Keys.events_channel`` as JSON
``{"job_id", "kind", ...}`` (kinds: ``status``, ``progress``, ``update`` from the job store,
``preview`` and anything else via ``publish``). One listener task per EventBus holds the only
subscription and hands each event to the mailboxes of the subscribers of that job (and of
everything). Mailboxes are bounded: on overflow the oldest non-status event is dropped; status
events are never dropped. If the connection drops the listener resubscribes with backoff and
then sends every subscriber ``{"job_id", "kind": "resync"}``: events may have been missed, so
re-read the record (the capped stream ``Keys.events_stream`` also holds the store's events).

Use ``async with bus.subscription(job_id) as events`` when nothing may be missed: it yields only
after Redis confirmed the SUBSCRIBE. ``subscribe(job_id)`` is the lazy form: it subscribes on the
first ``__anext__``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any, NamedTuple

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..errors import StoreError
from .connection import translated, where
from .keys import Keys

log = logging.getLogger(__name__)

PREVIEW_TTL_S = 3600  # the latest preview of a job outlives it by at most this
MAX_PREVIEW_BYTES = 2 * 1024 * 1024  # previews are small JPEGs; anything bigger is not kept
NEVER_DROPPED = frozenset({"status", "resync"})


class Preview(NamedTuple):
    content_type: str
    data: bytes
    node_id: str | None = None


class _Mailbox:
    """A bounded per-subscriber queue that never drops status events."""

    def __init__(self, job_id: str | None, maxsize: int) -> None:
        self.job_id = job_id
        self.dropped = 0
        self._items: deque[dict[str, Any]] = deque()
        self._maxsize = maxsize
        self._wake = asyncio.Event()
        self._closed = False

    def put(self, event: dict[str, Any]) -> None:
        self._items.append(event)
        if len(self._items) > self._maxsize:
            for i, old in enumerate(self._items):
                if old.get("kind") not in NEVER_DROPPED:
                    del self._items[i]
                    self.dropped += 1
                    break
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    async def get(self) -> dict[str, Any] | None:
        """The next event, or ``None`` once the bus is closed and the mailbox drained."""
        while not self._items:
            if self._closed:
                return None
            self._wake.clear()
            await self._wake.wait()
        return self._items.popleft()


class Subscription:
    """Async iterator over one subscriber's events; ends when the bus closes."""

    def __init__(self, mailbox: _Mailbox) -> None:
        self._mailbox = mailbox

    @property
    def dropped(self) -> int:
        return self._mailbox.dropped

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        event = await self._mailbox.get()
        if event is None:
            raise StopAsyncIteration
        return event


class EventBus:
    """Implements ``ports.EventBus``; close it with ``await bus.close()``."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, *, queue_size: int = 256,
                 ready_timeout_s: float = 10.0, max_reconnect_delay_s: float = 5.0,
                 channel: str | None = None) -> None:
        """``channel``: listen there instead of ``keys.events_channel`` (a worker listens to
        ``keys.cancel_channel`` only, not to every event of every job)."""
        self._redis = redis
        self._keys = keys
        self._channel = channel or keys.events_channel
        self._queue_size = queue_size
        self._ready_timeout_s = ready_timeout_s
        self._max_delay_s = max_reconnect_delay_s
        self._boxes: dict[str | None, set[_Mailbox]] = defaultdict(set)
        self._listener: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._last_error: BaseException | None = None
        self._closed = False
        self._listen_client: aioredis.Redis | None = None

    # -- publishing ----------------------------------------------------------------------------
    async def publish(self, job_id: str, kind: str, data: dict[str, Any]) -> None:
        message = json.dumps({**data, "job_id": job_id, "kind": kind})
        with translated(self._redis, "publish of a job event"):
            await self._redis.publish(self._keys.events_channel, message)

    async def set_preview(self, job_id: str, content_type: str, data: bytes, *,
                          node_id: str | None = None) -> bool:
        """Keep the latest preview (``PREVIEW_TTL_S``) and publish it as a ``preview`` event.
        A preview larger than ``MAX_PREVIEW_BYTES`` is neither kept nor published (False)."""
        if len(data) > MAX_PREVIEW_BYTES:
            return False
        encoded = base64.b64encode(data).decode("ascii")
        stored = json.dumps({"content_type": content_type, "data": encoded, "node_id": node_id})
        event = json.dumps({"job_id": job_id, "kind": "preview", "content_type": content_type,
                            "node_id": node_id, "size_bytes": len(data), "data": encoded})
        with translated(self._redis, "store of a preview"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._keys.preview(job_id), stored, ex=PREVIEW_TTL_S)
                pipe.publish(self._keys.events_channel, event)
                await pipe.execute()
        return True

    async def get_preview(self, job_id: str) -> Preview | None:
        with translated(self._redis, "read of a preview"):
            stored = await self._redis.get(self._keys.preview(job_id))
        if stored is None:
            return None
        preview = json.loads(stored)
        return Preview(preview["content_type"], base64.b64decode(preview["data"]),
                       preview.get("node_id"))

    # -- subscribing ---------------------------------------------------------------------------
    @asynccontextmanager
    async def subscription(self, job_id: str | None) -> AsyncIterator[Subscription]:
        """Yield the events of ``job_id`` (``None``: every job) once SUBSCRIBE is confirmed."""
        box = _Mailbox(job_id, self._queue_size)
        self._boxes[job_id].add(box)
        try:
            await self._wait_ready()
            yield Subscription(box)
        finally:
            self._boxes[job_id].discard(box)
            if not self._boxes[job_id]:
                del self._boxes[job_id]

    async def subscribe(self, job_id: str) -> AsyncIterator[dict[str, Any]]:
        """Events of one job; subscribes lazily on the first ``__anext__``."""
        async with self.subscription(job_id) as events:
            async for event in events:
                yield event

    async def subscribe_all(self) -> AsyncIterator[dict[str, Any]]:
        """Events of every job, for dashboards."""
        async with self.subscription(None) as events:
            async for event in events:
                yield event

    async def close(self) -> None:
        """Stop the listener and end every subscriber's iteration."""
        self._closed = True
        task, self._listener = self._listener, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        for boxes in self._boxes.values():
            for box in boxes:
                box.close()
        if self._listen_client is not None:
            with suppress(RedisError, OSError):
                await self._listen_client.aclose(close_connection_pool=True)
            self._listen_client = None

    # -- the listener --------------------------------------------------------------------------
    async def _wait_ready(self) -> None:
        if self._closed:
            raise StoreError("the event bus is closed")
        if self._listener is None or self._listener.done():
            self._ready.clear()
            self._listener = asyncio.create_task(self._listen(), name="comfyfleet-event-bus")
        try:
            async with asyncio.timeout(self._ready_timeout_s):
                await self._ready.wait()
        except TimeoutError:
            raise StoreError(f"cannot subscribe to job events at {where(self._redis)}: "
                             f"{self._last_error or 'no confirmation in time'}") from None

    def _pubsub(self) -> Any:
        """A pub/sub on a client of its own without redis-py's silent reconnect, so a drop
        reaches ``_listen`` (which resubscribes and sends ``resync``)."""
        if self._listen_client is None:
            pool = self._redis.connection_pool
            kwargs = {**pool.connection_kwargs, "retry": Retry(NoBackoff(), 0)}
            self._listen_client = aioredis.Redis(connection_pool=type(pool)(
                connection_class=pool.connection_class, max_connections=2, **kwargs))
        return self._listen_client.pubsub()

    async def _listen(self) -> None:
        delay, connected_before = 0.1, False
        while True:
            pubsub = self._pubsub()
            try:
                await self._subscribe(pubsub)
                if connected_before:
                    self._broadcast_resync()
                connected_before, delay = True, 0.1
                self._ready.set()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._dispatch(message["data"])
            except (RedisError, OSError) as exc:
                self._ready.clear()
                self._last_error = exc
                log.warning("event bus lost Redis at %s: %s; resubscribing in %.1f s",
                            where(self._redis), exc, delay)
            finally:
                with suppress(RedisError, OSError):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_delay_s)

    async def _subscribe(self, pubsub: Any) -> None:
        """SUBSCRIBE and wait (bounded) for the server's confirmation."""
        async with asyncio.timeout(self._ready_timeout_s):
            await pubsub.subscribe(self._channel)
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message.get("type") == "subscribe":
                    return

    def _dispatch(self, raw: str) -> None:
        try:
            event = json.loads(raw)
        except ValueError:
            log.warning("ignoring a malformed job event: %.200s", raw)
            return
        if not isinstance(event, dict) or not isinstance(event.get("job_id"), str):
            log.warning("ignoring a job event without a job id: %.200s", raw)
            return
        for box in (*self._boxes.get(event["job_id"], ()), *self._boxes.get(None, ())):
            box.put(event)

    def _broadcast_resync(self) -> None:
        for boxes in self._boxes.values():
            for box in boxes:
                box.put({"job_id": box.job_id, "kind": "resync"})
