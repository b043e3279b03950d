"""``GET /health``: no auth, never probes ComfyUI itself; ``services.health()`` adds backends."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends

from ..errors import StoreError
from .context import ApiContext, get_context

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/health")
async def health(ctx: ApiContext = Depends(get_context)) -> dict[str, Any]:
    try:
        await ctx.services.store.list(limit=1)
        redis = "ok"
    except StoreError as exc:
        redis = f"unavailable: {exc}"
    try:
        extra = await ctx.services.health()
    except Exception as exc:  # a broken probe degrades health, it does not fail the route
        log.exception("health probe failed")
        extra = {"health_error": type(exc).__name__}
    degraded = redis != "ok" or "health_error" in extra or extra.get("status") == "degraded"
    return {**extra, "status": "degraded" if degraded else "healthy", "redis": redis}
