"""What ``comfyfleet backends`` does: list, add, drain, disable, enable and remove backends of a
running comfyfleet server through ``/api/v2/backends``."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from .client_cli import _call, _client, console
from .config import parse_backends
from .errors import ComfyFleetError


async def manage_backends(*, server: str, add: list[str], capacity: int, tags: list[str],
                          drain: list[str], disable: list[str], enable: list[str],
                          remove: list[str], as_json: bool) -> None:
    async with _client(server) as client:
        for config in parse_backends(add):
            await _call(client, "POST", "/api/v2/backends",
                        json={"name": config.name, "url": config.url, "capacity": capacity, "tags": tags})
        for names, state in ((drain, "draining"), (disable, "disabled"), (enable, "active")):
            for name in names:
                await _call(client, "PATCH", f"/api/v2/backends/{name}", json={"state": state})
        for name in remove:
            await _call(client, "DELETE", f"/api/v2/backends/{name}")
        listing = await _call(client, "GET", "/api/v2/backends")
    backends = listing.get("backends", [])
    if as_json:
        import json
        console.print_json(json.dumps(backends))
        return
    show(backends)


def show(backends: list[dict[str, Any]]) -> None:
    if not backends:
        raise ComfyFleetError("no backends are registered")
    table = Table("name", "url", "state", "load", "breaker", "tags", "free VRAM", "checked")
    for b in backends:
        health = b.get("health") or {}
        vram = health.get("vram_free")
        breaker = b.get("breaker") or {}
        table.add_row(b["name"], b["url"], b["state"], f"{b['load']}/{b['capacity']}",
                      f"{breaker.get('status')} ({breaker.get('failures', 0)} failures)",
                      ",".join(b.get("tags") or ()) or "-",
                      "-" if vram is None else f"{vram / 1024**3:.1f} GiB",
                      "-" if not health.get("checked_at") else f"{health.get('latency_ms') or 0:.0f} ms")
    console.print(table)
