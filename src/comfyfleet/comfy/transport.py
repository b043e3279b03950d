"""The HTTP transport to ComfyUI servers: aiohttp sessions, their timeouts, and the translation
of every aiohttp, OS and timeout error (and the ValueError aiohttp raises for a host or header it
cannot send) into the ``BackendError`` tree.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from ..errors import BackendError, BackendRefused, BackendTimeout, BackendUnavailable

KEEPALIVE_S = 30.0  # an idle pooled connection is closed after this long

# What a request on a session can raise besides our own errors (TimeoutError is an OSError).
# ValueError too: aiohttp raises UnicodeError (a ValueError) while resolving a host that does not
# encode (an empty label as in ``gpu9..lan``, one over 63 characters), and ValueError for a header
# value holding CR, LF or NUL, each before anything is sent; the input checks refuse both, but a
# record stored before them, or one a check missed, must read as a backend error, not escape.
TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, ValueError)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientTimeouts:
    connect_s: float = 5.0
    read_s: float = 30.0
    submit_s: float = 60.0  # POST /prompt validates the graph inside the request
    download_s: float = 300.0

    def call(self, total_s: float) -> aiohttp.ClientTimeout:
        """One API call: a new connection within ``connect_s``, the whole answer within ``total_s``."""
        return aiohttp.ClientTimeout(total=total_s, sock_connect=self.connect_s)

    def stream(self) -> aiohttp.ClientTimeout:
        """A streamed download: a new connection within ``connect_s``, a pooled one within
        ``download_s``, and no read of the body waits longer than ``download_s`` however long the
        whole transfer takes."""
        return aiohttp.ClientTimeout(total=None, connect=self.download_s, sock_connect=self.connect_s,
                                     sock_read=self.download_s)


def open_session(*, limit: int = 64, timeouts: ClientTimeouts = ClientTimeouts()) -> aiohttp.ClientSession:
    """A pool of at most ``limit`` keep-alive connections. Create it inside the running event loop
    and close it with ``await session.close()``. Cookies are not kept (ComfyUI sets none; auth
    goes in per-backend headers)."""
    connector = aiohttp.TCPConnector(limit=limit, keepalive_timeout=KEEPALIVE_S)
    return aiohttp.ClientSession(connector=connector, timeout=timeouts.call(timeouts.read_s),
                                 cookie_jar=aiohttp.DummyCookieJar())


def translate(exc: BaseException, backend: str) -> BackendError:
    """The ``BackendError`` for an exception out of a session request or a response body."""
    kind = type(exc).__name__
    if isinstance(exc, TimeoutError):
        return BackendTimeout(f"{backend}: timed out ({kind})", backend=backend)
    if isinstance(exc, aiohttp.InvalidURL):
        return BackendError(f"{backend}: invalid URL {exc}", backend=backend)
    if isinstance(exc, aiohttp.ClientConnectorError):  # raised only while connecting: nothing sent
        return BackendRefused(f"{backend}: cannot connect to the server ({kind}: {exc})", backend=backend)
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return BackendUnavailable(f"{backend}: cannot reach the server ({kind}: {exc})", backend=backend)
    if isinstance(exc, UnicodeError):  # raised while resolving: nothing sent
        return BackendRefused(f"{backend}: its URL's host is not a valid host name, fix the backend's "
                              f"url ({kind}: {exc})", backend=backend)
    if isinstance(exc, ValueError):  # raised while writing the request head: nothing sent
        return BackendRefused(f"{backend}: the request cannot be sent, check the backend's url and "
                              f"headers (no CR, LF or NUL in a value) ({kind}: {exc})", backend=backend)
    return BackendError(f"{backend}: {kind}: {exc}", backend=backend)
