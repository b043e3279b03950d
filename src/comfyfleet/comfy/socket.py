"""A WebSocket to one ComfyUI server under one client_id.

ComfyUI sends a prompt's events only to the socket whose ``clientId`` submitted it, so a tracked
prompt gets its own socket opened with its attempt's client_id. Opening completes a readiness
handshake: the server's first ``status`` frame (with our sid) must arrive before the socket is
handed out. Every websockets error is translated here into ``BackendUnavailable`` (and the
UnicodeError of a host that does not encode, raised while connecting, into ``BackendRefused``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, WebSocketException

from ..errors import BackendProtocolError, BackendRefused, BackendUnavailable
from .messages import Message, StatusMessage, parse


@dataclass(frozen=True, slots=True, kw_only=True)
class SocketSettings:
    open_timeout_s: float = 5.0
    ping_interval_s: float = 10.0
    ping_timeout_s: float = 10.0
    close_timeout_s: float = 2.0
    max_frame_bytes: int = 64 * 1024 * 1024
    # Ask for type-4 previews (with prompt and node ids) instead of anonymous type-1 ones.
    preview_metadata: bool = True


class PromptSocket:
    """One open socket; use ``open_socket`` to get one."""

    def __init__(self, connection: ClientConnection, *, client_id: str, backend: str,
                 settings: SocketSettings) -> None:
        self._connection = connection
        self.client_id = client_id
        self.backend = backend
        self._settings = settings
        self.closed = False

    async def receive(self) -> Message:
        """Next parsed frame. Raises ``BackendUnavailable`` when the socket is closed."""
        try:
            frame = await self._connection.recv()
        except (WebSocketException, OSError) as exc:
            self.closed = True
            raise BackendUnavailable(f"{self.backend}: socket closed ({type(exc).__name__})",
                                     backend=self.backend) from exc
        return parse(frame)

    async def send_json(self, payload: Any) -> None:
        try:
            await self._connection.send(json.dumps(payload))
        except (WebSocketException, OSError) as exc:
            self.closed = True
            raise BackendUnavailable(f"{self.backend}: socket send failed", backend=self.backend) from exc

    async def close(self) -> None:
        """Close and wait for the close to complete, so a fresh socket with the same clientId
        never overlaps this one (ComfyUI would leave the new one deaf)."""
        self.closed = True
        try:
            async with asyncio.timeout(self._settings.close_timeout_s + 1.0):
                await self._connection.close()
                await self._connection.wait_closed()
        except (WebSocketException, OSError, TimeoutError):
            pass


SocketFactory = Callable[[str, str, str], Awaitable[PromptSocket]]


async def open_socket(ws_url: str, *, client_id: str, backend: str,
                      settings: SocketSettings = SocketSettings()) -> PromptSocket:
    """Connect and complete the handshake (first ``status`` frame) or raise ``BackendUnavailable``."""
    try:
        async with asyncio.timeout(settings.open_timeout_s):
            connection = await connect(ws_url, open_timeout=settings.open_timeout_s,
                                       ping_interval=settings.ping_interval_s,
                                       ping_timeout=settings.ping_timeout_s,
                                       close_timeout=settings.close_timeout_s,
                                       max_size=settings.max_frame_bytes,
                                       # Direct, like the HTTP client (no proxy from the
                                       # environment), and uncompressed: the frames are small
                                       # JSON and JPEG previews, deflate only costs CPU both ends.
                                       proxy=None, compression=None)
            socket = PromptSocket(connection, client_id=client_id, backend=backend, settings=settings)
            try:
                first = await socket.receive()
            except BaseException:
                await socket.close()
                raise
            if not isinstance(first, StatusMessage):
                await socket.close()
                raise BackendProtocolError(f"{backend}: first socket frame was {type(first).__name__}",
                                           backend=backend)
            if settings.preview_metadata:
                try:
                    await socket.send_json({"type": "feature_flags",
                                            "data": {"supports_preview_metadata": True}})
                except BaseException:
                    await socket.close()
                    raise
            return socket
    except TimeoutError as exc:
        raise BackendUnavailable(f"{backend}: socket handshake timed out", backend=backend) from exc
    except (InvalidHandshake, WebSocketException, OSError) as exc:
        raise BackendUnavailable(f"{backend}: cannot open socket ({type(exc).__name__}: {exc})",
                                 backend=backend) from exc
    except ValueError as exc:  # UnicodeError resolving a host that does not encode: nothing sent
        raise BackendRefused(f"{backend}: cannot open socket, check the backend's url "
                             f"({type(exc).__name__}: {exc})", backend=backend) from exc


class SocketOpening:
    """A socket opened ahead of time, for the first caller of ``opener`` (a tracker's first
    ``connect``); any later call opens a new one. ``discard`` closes it if nobody took it."""

    def __init__(self, ws_url: str, *, client_id: str, backend: str,
                 settings: SocketSettings = SocketSettings()) -> None:
        self._task = asyncio.create_task(open_socket(ws_url, client_id=client_id, backend=backend,
                                                     settings=settings))
        self._taken = False

    async def opener(self, ws_url: str, **options: Any) -> PromptSocket:
        if self._taken:
            return await open_socket(ws_url, **options)
        self._taken = True
        return await self._task

    async def discard(self) -> None:
        if self._taken:
            return
        self._taken = True
        self._task.cancel()
        await asyncio.wait({self._task})
        if not self._task.cancelled() and self._task.exception() is None:
            await self._task.result().close()
