"""``GET /health``: no auth, never probes ComfyUI itself; ``services.health()`` adds the fleet
(each backend's state, load and breaker, the live workers, and ``problems``).

``healthy``, or ``degraded`` when something keeps jobs from running (no worker, backends that
cannot take work; 200 either way: the API still takes jobs), or 503 when the store is away.
On a server with API keys only an admin's key gets the details (backend names and addresses, the
store's error); anyone else gets the status alone, which is all a probe needs."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..errors import StoreError
from .access import bearer_token, identify
from .context import ApiContext, get_context

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/health")
async def health(request: Request, ctx: ApiContext = Depends(get_context)) -> JSONResponse:
    try:
        await ctx.services.store.list(limit=1)
        redis = "ok"
    except StoreError as exc:
        redis = f"unavailable: {exc}"
    try:
        extra = await ctx.services.health() if redis == "ok" else {}
    except Exception as exc:  # a broken probe degrades health, it does not fail the route
        log.exception("health probe failed")
        extra = {"health_error": type(exc).__name__}
    degraded = redis != "ok" or "health_error" in extra or extra.get("status") == "degraded"
    status = "degraded" if degraded else "healthy"
    caller = identify(ctx, bearer_token(request.headers.get("authorization")))
    code = 200 if redis == "ok" else 503
    if caller is None or not caller.admin:
        return JSONResponse({"status": status, "redis": "ok" if redis == "ok" else "unavailable"},
                            status_code=code)
    return JSONResponse({**extra, "status": status, "redis": redis}, status_code=code)
