"""``/dashboard``: the operators' page (static files from ``comfyfleet/dashboard``).

The page holds no data: it asks for an API key when the server has keys and reads everything
from ``WS /api/v2/live``, acting through the REST routes. It is served with a strict
Content-Security-Policy (its own scripts and styles only, no inline code), so a job's text
shown on it can never run as script.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

router = APIRouter(include_in_schema=False)

FILES = {"index.html": "text/html; charset=utf-8",
         "app.js": "text/javascript; charset=utf-8",
         "app.css": "text/css; charset=utf-8"}
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:; "
                               "img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def _read(name: str) -> bytes:
    return resources.files("comfyfleet").joinpath("dashboard", name).read_bytes()


def _file(name: str) -> Response:
    return Response(_read(name), media_type=FILES[name], headers=HEADERS)


@router.api_route("/dashboard", methods=["GET", "HEAD"])
async def page() -> Response:
    return _file("index.html")


@router.api_route("/dashboard/app.js", methods=["GET", "HEAD"])
async def script() -> Response:
    return _file("app.js")


@router.api_route("/dashboard/app.css", methods=["GET", "HEAD"])
async def style() -> Response:
    return _file("app.css")
