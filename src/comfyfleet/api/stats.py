"""``GET /stats``: what tracking ComfyUI costs, per backend, summed over every worker.

Counters per backend: ``socket_connects``, ``socket_failures`` (failed opens and sockets that
closed under a tracker), ``socket_renewals`` (silent sockets reopened by the watchdog),
``events_received``, ``poll_requests`` (``/queue`` and ``/history`` polls), ``fallback_episodes``,
``socket_returns`` (back from polling to the socket) and ``history_requests`` (confirmations).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from .context import ApiContext, get_context

router = APIRouter(tags=["health"])


@router.get("/stats")
async def stats(ctx: ApiContext = Depends(get_context)) -> dict[str, Any]:
    return {"tracking": await ctx.services.tracking_stats()}
