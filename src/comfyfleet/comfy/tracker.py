"""Follow one prompt on one ComfyUI server until its outcome is confirmed by ``/history``.

The socket opened with the attempt's client_id is the primary source. Two modes:

* **socket**: events of our prompt drive the progress model. A watchdog measures the silence
  since the last event of ours; when it runs out, one ``/queue`` probe decides: still pending
  (silence is expected, keep listening), finished (read the outcome), or running (the socket is
  deaf or dead: the duplicate-clientId trap). Running means fallback.
* **fallback**: the socket is closed and reopened fresh (jittered backoff when it cannot be), and
  ``/queue`` then ``/history/{id}`` are polled at growing intervals. The first event of our prompt
  on a socket (or a poll showing the prompt waiting with a socket open) returns to socket mode.

A terminal event is only a hint: the outcome is what ``/history`` says (the history race).
``apply_message`` is the one translation of socket messages into progress-model calls.
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
    watchdog_s: float = 30.0  # silence of our running prompt on the socket before falling back
    poll_min_s: float = 1.0  # first polling interval of a fallback episode; doubles ...
    poll_max_s: float = 5.0  # ... up to this
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 5.0
    history_wait_s: float = 10.0  # how long a terminal event may precede its history entry
    unreachable_grace_s: float = 60.0  # backend unreachable this long: give the attempt up
    socket: SocketSettings = field(default_factory=SocketSettings)


@dataclass(slots=True)
class TrackerCounters:
    """What tracking cost, per backend; the worker adds these up and publishes them."""

    socket_connects: int = 0
    socket_failures: int = 0  # failed opens and sockets that closed under us
    socket_renewals: int = 0  # silent sockets closed by the watchdog and opened afresh
    events_received: int = 0
    poll_requests: int = 0
    fallback_episodes: int = 0
    socket_returns: int = 0
    history_requests: int = 0  # history confirmations (not polling)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str  # "success" | "error" | "interrupted" | "lost" | "unreachable" | "expired"
    history: HistoryEntry | None = None
    message: str = ""


class TrackerListener(Protocol):
    async def on_started(self) -> None: ...
    async def on_progress(self, progress: Progress) -> None: ...
    async def on_preview(self, content_type: str, data: bytes, node_id: str | None) -> None: ...


SocketOpener = Callable[..., Awaitable[PromptSocket]]


def apply_message(model: ProgressModel, message: m.Message) -> bool:
    """Feed one message of our prompt to the model; True when it can change the progress."""
    match message:
        case m.ExecutionCached(nodes=nodes):
            model.cached(list(nodes))
        case m.Executing(node=None):
            return False
        case m.Executing(node=node, display_node=display):
            model.node_started(node, display)
        case m.ProgressMessage(node=node, value=value, max=maximum):
            if node is None:
                return False
            model.node_progress(node, value, maximum)
        case m.ProgressState(nodes=nodes):
            model.progress_state(
                {nid: (n.value, n.max, n.state, n.display_node_id) for nid, n in nodes.items()})
        case m.Executed(node=node):
            if node is None:
                return False
            model.node_executed(node)
        case _:
            return False
    return True


# Messages that show our prompt is executing (as opposed to waiting in the server's queue).
_RUNNING_SIGNS = (m.ExecutionStart, m.ExecutionCached, m.Executing, m.ProgressMessage,
                  m.ProgressState, m.Executed)
_TERMINAL_HINTS = (m.ExecutionSuccess, m.ExecutionError, m.ExecutionInterrupted)


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
        self._socket_opened_at = 0.0
        self._started = False
        self._last_progress: Progress | None = None
        self._reconnect_delay_s = settings.reconnect_min_s
        self._next_reconnect_at = 0.0
        self._unreachable_since: float | None = None
        self.fallback = False  # the current mode (read by tests and diagnostics)

    # -- sockets -----------------------------------------------------------------------------
    @property
    def socket_open(self) -> bool:
        return self._socket is not None

    async def connect(self) -> bool:
        """Open a fresh socket under our client_id; False (and backoff) when it cannot."""
        await self.close()
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
        self._socket_opened_at = _now()
        self._reconnect_delay_s = self._settings.reconnect_min_s
        return True

    async def close(self) -> None:
        if self._socket is not None:
            socket, self._socket = self._socket, None
            await socket.close()

    # -- the loop ----------------------------------------------------------------------------
    async def follow(self) -> Outcome:
        """Track until the outcome is known. The socket should be open (``connect``) before the
        prompt is submitted, so no event is missed; a reattaching worker calls ``connect`` with
        the recorded client_id and the server replays the running node."""
        try:
            return await self._follow()
        finally:
            await self.close()

    async def _follow(self) -> Outcome:
        settings = self._settings
        heard_at = _now()  # last event of our prompt (the watchdog's reference)
        poll_interval = settings.poll_min_s
        next_poll_at = _now()
        if self._socket is None and not self.fallback:
            self._enter_fallback()
        while True:
            if self._socket is None and _now() >= self._next_reconnect_at:
                await self.connect()
            if self.fallback:
                deadline = next_poll_at if self._socket is not None else \
                    min(next_poll_at, self._next_reconnect_at)
            else:
                deadline = heard_at + settings.watchdog_s
            message = await self._next_message(deadline)
            if message is _CLOSED:
                self.counters.socket_failures += 1
                self._socket = None
                if not self.fallback:
                    self._enter_fallback()
                    next_poll_at, poll_interval = _now(), settings.poll_min_s
                continue
            if message is not None:
                if not self._is_ours(message):
                    continue
                heard_at = _now()
                if self.fallback:
                    self._leave_fallback()
                outcome = await self._handle(message)
                if outcome is not None:
                    return outcome
                continue
            if not self.fallback:
                # Watchdog: silent for watchdog_s. Is our prompt running (then the socket is deaf)?
                state = await self._probe()
                if isinstance(state, Outcome):
                    return state
                if state == "pending" and self._socket is not None:
                    heard_at = _now()  # waiting in the server's queue: silence is expected
                    continue
                self._enter_fallback()
                await self._renew_socket()
                poll_interval = settings.poll_min_s
                next_poll_at = _now() + poll_interval
                continue
            if _now() < next_poll_at:
                continue  # woke up to reconnect
            state = await self._probe()
            if isinstance(state, Outcome):
                return state
            if self._socket is not None:
                if state == "pending":
                    heard_at = _now()
                    self._leave_fallback()
                    continue
                if state == "running" and \
                        _now() - max(self._socket_opened_at, heard_at) >= settings.watchdog_s:
                    await self._renew_socket()  # reopened, yet deaf too
            poll_interval = min(poll_interval * 2, settings.poll_max_s)
            next_poll_at = _now() + poll_interval

    def probe_soon(self) -> None:
        """Whether the server has our prompt is not known (the answer to ``POST /prompt`` was
        lost, and looking it up failed): ask ``/queue`` and ``/history`` from the start, not
        after a watchdog's silence."""
        if not self.fallback:
            self._enter_fallback()

    def _enter_fallback(self) -> None:
        self.fallback = True
        self.counters.fallback_episodes += 1

    def _leave_fallback(self) -> None:
        self.fallback = False
        self.counters.socket_returns += 1

    async def _renew_socket(self) -> None:
        """Close a silent socket and reopen at once under the same client_id (trace 06b)."""
        self.counters.socket_renewals += 1
        await self.close()
        self._next_reconnect_at = 0.0

    async def _next_message(self, deadline: float) -> m.Message | object | None:
        """A message, ``_CLOSED``, or None when ``deadline`` (loop time) passes first."""
        wait_s = deadline - _now()
        if wait_s <= 0:
            return None
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
        # type-1 previews. ComfyUI sends the replay to our client_id only while our prompt runs;
        # a type-1 preview can also be another client's broadcast, so only after our start.
        if isinstance(message, m.Executing):
            return message.node is not None
        return isinstance(message, m.PreviewImage) and self._started

    async def _handle(self, message: m.Message) -> Outcome | None:
        if isinstance(message, m.PreviewImage):
            if self._started:
                await self._listener.on_preview(message.content_type, message.image,
                                                message.node_id or self._model.current_node)
            return None
        if isinstance(message, m.ExecutionError) and message.blocked:
            return None
        if isinstance(message, _TERMINAL_HINTS):
            return await self._confirm(history_ready=False)
        if isinstance(message, m.Executing) and message.node is None:
            return await self._confirm(history_ready=True)
        if isinstance(message, _RUNNING_SIGNS):
            await self._mark_started()
        if apply_message(self._model, message):
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
    async def _confirm(self, *, history_ready: bool) -> Outcome:
        """A terminal hint arrived: wait for ``executing{node:null}`` briefly, then read history
        until it has the entry (or the wait runs out and ``/queue`` decides)."""
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
                return await self._outcome(entry)
            if _now() >= deadline:
                state = await self._probe()
                if isinstance(state, Outcome):
                    return state
                deadline = _now() + self._settings.history_wait_s  # still queued or running
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._settings.poll_max_s)

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

    async def _probe(self) -> str | Outcome | None:
        """``/queue`` first, then ``/history`` (the order that cannot miss a finishing prompt).
        Returns "running", "pending", an Outcome, or None while the server cannot be reached."""
        try:
            self.counters.poll_requests += 1
            queue = await self._client.queue()
            found = queue.find(self.prompt_id)
            if found is not None:
                self._unreachable_since = None
                if found[0] == "running":
                    await self._mark_started()
                    return "running"
                return "pending"
            self.counters.poll_requests += 1
            entry = await self._client.history(self.prompt_id)
        except BackendError as exc:
            since = self._unreachable_since = self._unreachable_since or _now()
            if _now() - since >= self._settings.unreachable_grace_s:
                return Outcome("unreachable", message=str(exc))
            return None
        self._unreachable_since = None
        if entry is not None:
            return await self._outcome(entry)
        return Outcome("lost", message=f"{self._client.name} no longer knows prompt {self.prompt_id}")

    async def _outcome(self, entry: HistoryEntry) -> Outcome:
        if entry.outcome == "success":
            self._model.succeeded()
            await self._publish_progress()
        return Outcome(entry.outcome, entry)


_CLOSED = object()


def _now() -> float:
    return asyncio.get_running_loop().time()
