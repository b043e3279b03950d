"""Refuse what a web page on another site makes a browser send here.

A browser attaches its own cookies to nothing here, but it will still deliver a cross-site form
POST (``text/plain`` bodies are not preflighted) and open a cross-site WebSocket. On a server
without API keys, reachable at ``localhost`` from the operator's browser, that would let any page
the operator visits submit jobs, add a backend that receives the fleet's work, or read the live
feed. Browsers name the page's origin in an ``Origin`` header on every such request; clients that
are not browsers (comfy-sdk, curl, the CLI) send none. So: a request that changes something (any
method but GET, HEAD and OPTIONS) or opens a WebSocket, and carries an ``Origin`` that is neither
this server as the request addressed it (``Host``) nor its public URL, gets a 403 ``forbidden``.

A page can also become "this server as addressed": its DNS name, rebound to 127.0.0.1, makes the
browser send ``Host`` and ``Origin`` alike. On a server without API keys the ``Host`` therefore
counts only when it is an IP address or ``localhost``; any other name must be the public URL's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_response

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _host_port(netloc: str, scheme: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(f"//{netloc}")
        return (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS.get(scheme, 80)
    except ValueError:
        return None


def _not_rebindable(hostname: str) -> bool:
    """Whether ``hostname`` is one no other site's page can go by: an IP address or localhost."""
    if hostname == "localhost" or hostname.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        return False
    return True


def same_site(origin: str, host: str | None, scheme: str, public_base_url: str, *,
              any_host_name: bool = True) -> bool:
    """Whether ``origin`` (the header) is this server: as addressed, or its public URL.
    ``any_host_name=False``: as addressed only by an IP address or localhost."""
    try:
        parts = urlsplit(origin)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme, 80)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    claimed = (parts.hostname.lower(), port)
    public = urlsplit(public_base_url)
    if public.hostname and claimed == _host_port(public.netloc, public.scheme or "http") \
            and parts.scheme == public.scheme:
        return True
    addressed = _host_port(host, "https" if scheme in ("https", "wss") else "http") if host else None
    return addressed is not None and claimed == addressed \
        and (any_host_name or _not_rebindable(addressed[0]))


class RefuseCrossSite:
    """ASGI middleware: see the module docstring."""

    def __init__(self, app: ASGIApp, *, public_base_url: str, keyless: Callable[[], bool]) -> None:
        self.app = app
        self.public_base_url = public_base_url
        self.keyless = keyless  # whether the server takes no API key now

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and self._cross_site(scope):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 4403, "reason": "cross-site"})
                return
            response = error_response(403, "forbidden", "a request from another site's page is "
                                      "refused (its Origin is not this server; without API keys, "
                                      "this server by an IP address, localhost or its public URL)")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _cross_site(self, scope: Scope) -> bool:
        if scope["type"] == "http" and scope.get("method", "GET") in SAFE_METHODS:
            return False
        headers = {name: value for name, value in scope.get("headers", [])}
        origin = headers.get(b"origin")
        if origin is None:
            return False  # not a browser
        host = headers.get(b"host")
        return not same_site(origin.decode("latin-1"), host.decode("latin-1") if host else None,
                             scope.get("scheme", "http"), self.public_base_url,
                             any_host_name=not self.keyless())
