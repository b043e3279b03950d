"""Follow one prompt on one ComfyUI server until its outcome is confirmed by ``/history``.

The socket opened with the attempt's client_id is the primary source. When it closes, or stays
silent past the watchdog while our prompt is on the server, the tracker falls back to polling
``/queue`` then ``/history/{id}`` at growing intervals, keeps (re)opening a fresh socket with
jittered backoff, and goes back to the socket as soon as an event of our prompt arrives on it.
A terminal event is only a hint: the outcome is what ``/history`` says (the history race).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..domain.job import Progress
from ..domain.progress import ProgressModel
from ..errors import BackendError, BackendProtocolError, BackendUnavailable
from . import messages as m
from .client import ComfyClient, HistoryEntry
from .socket import PromptSocket, SocketSettings, open_socket


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackerSettings:
    watchdog_s: float = 30.0  # socket silence (our prompt on the server) before falling back
    poll_min_s: float = 1.0
    poll_max_s: float = 5.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 5.0
    history_wait_s: float = 10.0  # how long a terminal event may precede its history entry
    unreachable_grace_s: float = 60.0  # backend unreachable this long: give the attempt up
    socket: SocketSettings = field(default_factory=SocketSettings)


@dataclass(slots=True)
class TrackerCounters:
    """What tracking cost, per backend; the worker adds these up and publishes them."""

    socket_connects: int = 0
    socket_failures: int = 0
    events_received: int = 0
    poll_requests: int = 0
    fallback_episodes: int = 0
    socket_returns: int = 0
    history_requests: int = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str  # "success" | "error" | "interrupted" | "lost" | "unreachable"
    history: HistoryEntry | None = None
    message: str = ""


class TrackerListener(Protocol):
    async def on_started(self) -> None: ...
    async def on_progress(self, progress: Progress) -> None: ...
    async def on_preview(self, content_type: str, data: bytes) -> None: ...


SocketOpener = Callable[..., Awaitable[PromptSocket]]


class PromptTracker:
    def __init__(self, client: ComfyClient, *, prompt_id: str, client_id: str, model: ProgressModel,
                 listener: TrackerListener, settings: TrackerSettings = TrackerSettings(),
                 counters: TrackerCounters | None = None,
                 opener: SocketOpener = open_socket, rng: random.Random | None = None) -> None:
        self._client = client
        self.prompt_id = prompt_id
        self.client_id = client_id
        self._model = model
        self._listener = listener
        self._settings = settings
        self.counters = counters if counters is not None else TrackerCounters()
        self._opener = opener
        self._rng = rng or random.Random()
        self._socket: PromptSocket | None = None
        self._started = False
        self._last_progress: Progress | None = None
        self._reconnect_delay_s = settings.reconnect_min_s
        self._next_reconnect_at = 0.0
        self._unreachable_since: float | None = None

    # -- sockets -----------------------------------------------------------------------------
    async def connect(self) -> bool:
        """Open a fresh socket under our client_id; False (and backoff) when it cannot."""
        if self._socket is not None:
            await self._socket.close()
            self._socket = None
        try:
            self._socket = await self._opener(self._client.ws_url(self.client_id),
                                              client_id=self.client_id, backend=self._client.name,
                                              settings=self._settings.socket)
        except BackendError:
            self.counters.socket_failures += 1
            delay = self._rng.uniform(self._settings.reconnect_min_s, self._reconnect_delay_s)
            self._next_reconnect_at = _now() + delay
            self._reconnect_delay_s = min(self._reconnect_delay_s * 2, self._settings.reconnect_max_s)
            return False
        self.counters.socket_connects += 1
        self._reconnect_delay_s = self._settings.reconnect_min_s
        return True

    async def close(self) -> None:
        if self._socket is not None:
            await self._socket.close()
            self._socket = None

    # -- the loop ----------------------------------------------------------------------------
    async def follow(self) -> Outcome:
        """Track until the outcome is known. The socket should be open (``connect``) before the
        prompt is submitted, so no event is missed."""
        try:
            return await self._follow()
        finally:
            await self.close()

    async def _follow(self) -> Outcome:
        fallback = self._socket is None
        if fallback:
            self.counters.fallback_episodes += 1
        poll_interval = self._settings.poll_min_s
        while True:
            if self._socket is None and _now() >= self._next_reconnect_at:
                await self.connect()
            wait_s = poll_interval if fallback else self._settings.watchdog_s
            message = await self._next_message(wait_s)
            if message is _CLOSED:
                self.counters.socket_failures += 1
                self._socket = None
                if not fallback:
                    fallback, poll_interval = True, self._settings.poll_min_s
                    self.counters.fallback_episodes += 1
                message = None  # poll right away
            elif message is not None:
                if not self._is_ours(message):
                    continue
                if fallback:
                    fallback = False
                    self.counters.socket_returns += 1
                outcome = await self._handle(message)
                if outcome is not None:
                    return outcome
                continue
            # silence (or a closed socket): poll the server
            if not fallback:
                fallback, poll_interval = True, self._settings.poll_min_s
                self.counters.fallback_episodes += 1
                await self.close()  # a silent socket may be deaf (duplicate-clientId trap): renew it
                self._next_reconnect_at = 0.0
            outcome = await self._poll()
            if outcome is not None:
                return outcome
            poll_interval = min(poll_interval * 2, self._settings.poll_max_s)

    async def _next_message(self, wait_s: float) -> m.Message | object | None:
        """A message, ``_CLOSED``, or None after ``wait_s`` of silence."""
        if self._socket is None:
            await asyncio.sleep(wait_s)
            return None
        try:
            async with asyncio.timeout(wait_s):
                while True:
                    try:
                        message = await self._socket.receive()
                    except BackendProtocolError:
                        continue  # one malformed frame does not end tracking
                    self.counters.events_received += 1
                    return message
        except TimeoutError:
            return None
        except BackendUnavailable:
            return _CLOSED

    def _is_ours(self, message: m.Message) -> bool:
        prompt_id = m.prompt_id_of(message)
        if prompt_id is not None:
            return prompt_id == self.prompt_id
        # Frames without a prompt id on our own socket: the reconnect replay ``executing`` and
        # type-1 previews, which ComfyUI sends to our client_id only while our prompt runs.
        return isinstance(message, (m.Executing, m.PreviewImage)) and self._started

    async def _handle(self, message: m.Message) -> Outcome | None:
        model = self._model
        match message:
            case m.ExecutionStart():
                await self._mark_started()
            case m.ExecutionCached(nodes=nodes):
                await self._mark_started()
                model.cached(list(nodes))
            case m.Executing(node=None):
                return await self._confirm(history_ready=True)
            case m.Executing(node=node, display_node=display):
                await self._mark_started()
                model.node_started(node, display)
            case m.ProgressMessage(node=node, value=value, max=maximum):
                await self._mark_started()
                if node is not None:
                    model.node_progress(node, value, maximum)
            case m.ProgressState(nodes=nodes):
                await self._mark_started()
                model.progress_state(
                    {nid: (n.value, n.max, n.state, n.display_node_id) for nid, n in nodes.items()})
            case m.Executed(node=node):
                if node is not None:
                    model.node_executed(node)
            case m.PreviewImage(content_type=content_type, image=image):
                await self._listener.on_preview(content_type, image)
                return None
            case m.ExecutionError(blocked=True):
                return None
            case m.ExecutionSuccess() | m.ExecutionError() | m.ExecutionInterrupted():
                return await self._confirm(history_ready=False)
            case _:
                return None
        await self._publish_progress()
        return None

    async def _mark_started(self) -> None:
        if not self._started:
            self._started = True
            await self._listener.on_started()

    async def _publish_progress(self) -> None:
        snapshot = self._model.snapshot()
        if snapshot != self._last_progress:
            self._last_progress = snapshot
            await self._listener.on_progress(snapshot)

    # -- confirmation and polling ------------------------------------------------------------
    async def _confirm(self, *, history_ready: bool) -> Outcome | None:
        """A terminal hint arrived: wait for ``executing{node:null}`` briefly, then read history
        until it has the entry (or the wait runs out)."""
        deadline = _now() + self._settings.history_wait_s
        if not history_ready and self._socket is not None:
            history_ready = await self._await_finish_marker(deadline)
        delay = 0.05
        while True:
            try:
                entry = await self._history()
            except BackendError:
                entry = None
            if entry is not None:
                return self._outcome(entry)
            if _now() >= deadline:
                return await self._poll()  # still unknown: let /queue decide (running, or lost)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _await_finish_marker(self, deadline: float) -> bool:
        assert self._socket is not None
        try:
            async with asyncio.timeout(max(0.0, deadline - _now())):
                while True:
                    try:
                        message = await self._socket.receive()
                    except BackendProtocolError:
                        continue
                    self.counters.events_received += 1
                    if isinstance(message, m.Executing) and message.node is None and \
                            message.prompt_id == self.prompt_id:
                        return True
        except (TimeoutError, BackendUnavailable):
            return False

    async def _history(self) -> HistoryEntry | None:
        self.counters.history_requests += 1
        return await self._client.history(self.prompt_id)

    async def _poll(self) -> Outcome | None:
        """``/queue`` first, then ``/history`` (the order that cannot miss a finishing prompt)."""
        try:
            self.counters.poll_requests += 1
            queue = await self._client.queue()
            found = queue.find(self.prompt_id)
            if found is not None:
                self._unreachable_since = None
                if found[0] == "running":
                    await self._mark_started()
                return None
            self.counters.poll_requests += 1
            entry = await self._client.history(self.prompt_id)
        except BackendError as exc:
            since = self._unreachable_since = self._unreachable_since or _now()
            if _now() - since >= self._settings.unreachable_grace_s:
                return Outcome("unreachable", message=str(exc))
            return None
        self._unreachable_since = None
        if entry is not None:
            return self._outcome(entry)
        return Outcome("lost", message=f"{self._client.name} no longer knows prompt {self.prompt_id}")

    def _outcome(self, entry: HistoryEntry) -> Outcome:
        if entry.outcome == "success":
            self._model.succeeded()
        return Outcome(entry.outcome, entry)


_CLOSED = object()


def _now() -> float:
    return asyncio.get_running_loop().time()
