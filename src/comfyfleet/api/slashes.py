"""A path with a trailing slash the API does not have (``/api/v2/jobs/``) is redirected to the
path without it, with a *relative* ``Location``: behind a proxy that terminates TLS, the absolute
URL Starlette would build names the address the server listens on, which the client may not reach
(and plain http). A path that matches no route either way stays a 404 with the error envelope."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from starlette.routing import Match


def without_slash(app: FastAPI, request: Request) -> RedirectResponse | None:
    """The redirect for ``request``, if its path minus the trailing slash is a route of ``app``."""
    path = request.url.path
    if len(path) < 2 or not path.endswith("/"):
        return None
    stripped = path[:-1]
    scope = {**request.scope, "path": stripped, "raw_path": stripped.encode()}
    if not any(route.matches(scope)[0] is not Match.NONE for route in app.router.routes):
        return None
    query = request.url.query
    return RedirectResponse(stripped + (f"?{query}" if query else ""), status_code=307)
