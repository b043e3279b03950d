"""WebSocket table keyed by sid, with ComfyUI's exact replace-then-pop behaviour (server.py:188-246)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from .deadline import wait_bounded
from .images import preview_frame, preview_frame_with_metadata

SEND_TIMEOUT_S = 5.0
log = logging.getLogger(__name__)


@dataclass(eq=False)
class Connection:
    sid: str
    ws: web.WebSocketResponse
    request: web.BaseRequest
    feature_flags: dict = field(default_factory=dict)

    @property
    def wants_metadata(self) -> bool:
        return bool(self.feature_flags.get("supports_preview_metadata"))

    def drop(self) -> None:
        """Cut the TCP connection without a close frame: the client sees code 1006."""
        transport = self.request.transport
        if transport is not None:
            transport.abort()


class SocketHub:
    """`table` is ComfyUI's `self.sockets`; `connections` holds every open socket, listed or not."""

    def __init__(self, is_silent: Callable[[], bool]) -> None:
        self.table: dict[str, Connection] = {}
        self.connections: set[Connection] = set()
        self._is_silent = is_silent

    def register(self, conn: Connection) -> None:
        self.table.pop(conn.sid, None)
        self.table[conn.sid] = conn
        self.connections.add(conn)

    def unregister(self, conn: Connection) -> None:
        """The real `finally` pops the sid even if a newer socket owns it now (the deaf-socket trap)."""
        self.table.pop(conn.sid, None)
        self.connections.discard(conn)

    def recipients(self, sid: str | None) -> list[Connection]:
        if sid is None:
            return list(self.table.values())
        conn = self.table.get(sid)
        return [conn] if conn is not None else []

    async def send(self, kind: str, data: object, sid: str | None) -> None:
        """Text event to the socket of `sid`, or to every listed socket when `sid` is None."""
        if self._is_silent():
            return
        recipients = self.recipients(sid)
        if not recipients:
            return
        text = json.dumps({"type": kind, "data": data})
        for conn in recipients:
            await _deliver(conn, text)

    async def send_preview(self, image: bytes, metadata: dict, sid: str | None, *, with_metadata: bool) -> None:
        """Binary preview to the recipients that did (type 4) or did not (type 1) negotiate metadata."""
        if self._is_silent():
            return
        for conn in self.recipients(sid):
            if conn.wants_metadata == with_metadata:
                frame = preview_frame_with_metadata(image, metadata) if with_metadata else preview_frame(image)
                await _deliver(conn, frame)

    def deafen(self, sid: str) -> bool:
        """Forget `sid`'s socket but keep it open: it receives nothing more, not even broadcasts
        (what the real server does to a newer socket when an older one of the sid closes)."""
        return self.table.pop(sid, None) is not None

    def drop(self, sid: str | None = None) -> int:
        """Abort every connection of `sid` (all connections when None); returns how many."""
        victims = [c for c in self.connections if sid is None or c.sid == sid]
        for conn in victims:
            conn.drop()
        return len(victims)


async def _deliver(conn: Connection, payload: str | bytes) -> None:
    if conn.ws.closed:
        return
    try:
        send = conn.ws.send_bytes(payload) if isinstance(payload, bytes) else conn.ws.send_str(payload)
        await wait_bounded(send, SEND_TIMEOUT_S)
    except (ConnectionError, RuntimeError, TimeoutError) as exc:
        log.debug("ws send to %s failed: %r", conn.sid, exc)
