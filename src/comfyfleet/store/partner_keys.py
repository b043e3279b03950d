"""Partner keys (``extra_data.api_key_comfy_org``): handed to ComfyUI with the job's prompt,
never written anywhere.

The API process that accepted the job keeps the key in its memory (``PartnerKeyHolder``) until
the job's deadline. A worker about to submit the prompt asks for it on ``Keys.partner_ask_channel``
and the holder answers on ``Keys.partner_reply_channel`` (``PartnerKeys.ask``). Pub/sub messages
pass through Redis without being kept, nor written to its append-only file. So the key survives
anything but the holder itself: if that process restarted, no one answers and the job fails with
``partner_key_lost``, to be submitted again. A request no one answers is made again for
``ASK_PATIENCE_S``: the holder's subscription may be between two connections (a Redis restart,
a network blip), and a job is not failed for that moment.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from ..errors import StoreError
from .connection import translated
from .events import EventBus
from .keys import Keys

log = logging.getLogger(__name__)

ASK_WAIT_S = 2.0  # how long a worker waits for the holder's answer to one request
ASK_PATIENCE_S = 8.0  # how long it asks again before the key counts as lost
ASK_AGAIN_S = 0.5  # the pause between two requests no one answered
ANSWER = "partner_key"


class PartnerKeyHolder:
    """The keys of the jobs this API process accepted, and the task that hands them out."""

    def __init__(self, redis: Any, keys: Keys, *, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._keys = keys
        self._clock = clock
        self._held: dict[str, tuple[str, float]] = {}  # job id -> (key, held until)
        self._asks: EventBus | None = None
        self._answering: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    async def hold(self, job_id: str, key: str, until: float) -> None:
        """Keep ``key`` for the job until ``until``; returns once asks are being answered."""
        self._forget_expired()
        self._held[job_id] = (key, until)
        if self._answering is None or self._answering.done():
            self._listening.clear()
            self._answering = asyncio.create_task(self._answer_forever(), name="partner-keys")
        waiting = asyncio.ensure_future(self._listening.wait())
        await asyncio.wait({waiting, self._answering}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if not self._listening.is_set():
            self._held.pop(job_id, None)
            failed = self._answering
            reason = failed.exception() if failed.done() and not failed.cancelled() else None
            raise StoreError(f"cannot listen for partner key requests: {reason}")

    def drop(self, job_id: str) -> None:
        self._held.pop(job_id, None)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._held

    async def close(self) -> None:
        if self._answering is not None:
            self._answering.cancel()
            with suppress(asyncio.CancelledError):
                await self._answering
        if self._asks is not None:
            await self._asks.close()
        self._held.clear()

    async def _answer_forever(self) -> None:
        self._asks = EventBus(self._redis, self._keys, channel=self._keys.partner_ask_channel)
        async with self._asks.subscription(None) as asks:
            self._listening.set()
            async for ask in asks:
                if ask.get("kind") != "ask":
                    continue
                held = self._held.get(str(ask.get("job_id")))
                if held is None or held[1] < self._clock():
                    continue
                try:
                    await self._redis.publish(self._keys.partner_reply_channel, json.dumps(
                        {"job_id": ask["job_id"], "kind": ANSWER, "key": held[0]}))
                except Exception as exc:  # noqa: BLE001 - the asker times out and says so
                    log.warning("could not answer a partner key request: %s", type(exc).__name__)

    def _forget_expired(self) -> None:
        now = self._clock()
        for job_id in [j for j, (_, until) in self._held.items() if until < now]:
            del self._held[job_id]


class PartnerKeys:
    """A worker's side: ask the holder of a job's partner key for it."""

    def __init__(self, redis: Any, keys: Keys, *, wait_s: float = ASK_WAIT_S,
                 patience_s: float = ASK_PATIENCE_S) -> None:
        self._redis = redis
        self._keys = keys
        self._wait_s = wait_s
        self.patience_s = patience_s
        self._replies = EventBus(redis, keys, channel=keys.partner_reply_channel)

    async def ask(self, job_id: str) -> str | None:
        """The job's key, or None when no API process gave it within ``patience_s``."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.patience_s
        async with self._replies.subscription(job_id) as replies:
            while True:
                with translated(self._redis, "a partner key request"):
                    listeners = await self._redis.publish(self._keys.partner_ask_channel,
                                                          json.dumps({"job_id": job_id, "kind": "ask"}))
                if listeners:
                    with suppress(TimeoutError):
                        async with asyncio.timeout(min(self._wait_s, max(0.0, give_up_at - loop.time()))):
                            async for reply in replies:
                                if reply.get("kind") == ANSWER and isinstance(reply.get("key"), str):
                                    return reply["key"]
                if loop.time() + ASK_AGAIN_S >= give_up_at:
                    return None
                await asyncio.sleep(ASK_AGAIN_S)

    async def close(self) -> None:
        await self._replies.close()
