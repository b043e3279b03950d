"""Map exceptions to the contract's error envelope ``{"error": {"code", "message", "details"}}``.

    ValidationFailed         its own status and code
    JobNotFound              404 not_found
    BlobNotFound             404 not_found
    StoreError               503 store_unavailable + Retry-After (the store may be back soon)
    RequestValidationError   422 invalid_request (not FastAPI's default shape)
    HTTPException            its status; 404 not_found, 405 method_not_allowed, else http_<n>
                             (a 404 for a known path plus a slash: a relative 307 to that path)
    anything else            500 upstream_error with a generic message; the traceback is logged
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..blobs import BlobNotFound
from ..errors import JobNotFound, StoreError, ValidationFailed
from .schemas import error_body
from .slashes import without_slash

log = logging.getLogger(__name__)

STORE_RETRY_AFTER_S = 2
HTTP_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 413: "payload_too_large", 429: "rate_limited"}


def error_response(status_code: int, code: str, message: str,
                   details: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status_code,
                        headers=headers)


async def _validation_failed(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ValidationFailed)
    return error_response(exc.status_code, exc.code, str(exc), exc.details, headers=exc.headers)


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    return error_response(404, "not_found", str(exc) or "not found")


async def _blob_not_found(_: Request, exc: Exception) -> JSONResponse:
    return error_response(404, "not_found", "the asset's content is not available")


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: job store unavailable: %s", request.method, request.url.path, exc)
    return error_response(503, "store_unavailable", "the job store is unavailable; retry shortly",
                          headers={"Retry-After": str(STORE_RETRY_AFTER_S)})


async def _request_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [{"location": [str(part) for part in err.get("loc", ())], "message": err.get("msg")}
                for err in exc.errors()]
    first = problems[0] if problems else {"location": [], "message": "invalid request"}
    message = f"{'.'.join(first['location']) or 'request'}: {first['message']}"
    return error_response(422, "invalid_request", message, {"errors": problems})


async def _http_exception(request: Request, exc: Exception) -> JSONResponse | RedirectResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404 and (redirect := without_slash(request.app, request)) is not None:
        return redirect
    code = HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


class CatchUnexpected:
    """ASGI middleware: any other exception becomes a logged 500 ``upstream_error``.

    A middleware rather than an ``Exception`` handler: Starlette re-raises after calling such a
    handler, which would log the error twice and crash in-process test clients.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("%s %s failed unexpectedly", scope.get("method"), scope.get("path"))
            if started:
                raise
            response = error_response(500, "upstream_error",
                                      "the server failed to process the request")
            await response(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ValidationFailed, _validation_failed)
    app.add_exception_handler(JobNotFound, _not_found)
    app.add_exception_handler(BlobNotFound, _blob_not_found)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_middleware(CatchUnexpected)
