"""What ``comfyfleet backends`` does: list, add, drain, disable, enable and remove backends of a
running comfyfleet server through ``/api/v2/backends``."""

from __future__ import annotations

from typing import Any

from .client_cli import NOT_COMFYFLEET, _call, _client, console, print_listing, segment
from .config import parse_backends
from .errors import ComfyFleetError


async def manage_backends(*, server: str, add: list[str], capacity: int, tags: list[str],
                          drain: list[str], disable: list[str], enable: list[str],
                          remove: list[str], as_json: bool) -> None:
    configs = parse_backends(add)  # every --add and --tag checked before the first change is made
    for tag in tags:
        if not tag or "," in tag:  # the rule of the fleet file and POST /api/v2/backends
            raise ComfyFleetError(f"--tag {tag!r} must be a non-empty string without commas")
    for name in (*drain, *disable, *enable, *remove):
        if not name.strip():
            raise ComfyFleetError(f"--drain, --disable, --enable and --remove take a backend name, got {name!r}")
    asked = [(flag, name) for flag, names in (("--drain", drain), ("--disable", disable),
                                              ("--enable", enable), ("--remove", remove)) for name in names]
    for name in {name for _, name in asked}:
        flags = sorted({flag for flag, named in asked if named == name})
        if len(flags) > 1:
            raise ComfyFleetError(f"{' and '.join(flags)} both name backend {name!r}: say which one")
    async with _client(server) as client:
        for config in configs:
            await _call(client, "POST", "/api/v2/backends",
                        json={"name": config.name, "url": config.url, "capacity": capacity, "tags": tags})
        for names, state in ((drain, "draining"), (disable, "disabled"), (enable, "active")):
            for name in names:
                await _call(client, "PATCH", f"/api/v2/backends/{segment(name)}", json={"state": state})
        for name in remove:
            await _call(client, "DELETE", f"/api/v2/backends/{segment(name)}")
        listing = await _call(client, "GET", "/api/v2/backends")
    backends = listing.get("backends")
    if not isinstance(backends, list) or not all(
            isinstance(b, dict) and all(k in b for k in ("name", "url", "state", "load", "capacity"))
            for b in backends):
        raise ComfyFleetError(f"GET /api/v2/backends answered without a list of backends; {NOT_COMFYFLEET}")
    if as_json:
        import json
        console.print_json(json.dumps(backends))
        return
    show(backends)
    show_workflow_breakers(listing.get("workflow_breakers"))


def show_workflow_breakers(breakers: object) -> None:
    """The breakers of (job type, workflow shape, owner) that have seen failures, if any."""
    if not isinstance(breakers, list) or not breakers:
        return
    console.print("\nworkflow breakers", highlight=False)
    print_listing(("job type", "workflow", "owner", "breaker", "failures"),
                  [[str(b.get("job_type")), str(b.get("workflow")), str(b.get("owner") or "-"),
                    str(b.get("status")), str(b.get("failures"))]
                   for b in breakers if isinstance(b, dict)], keys=3)


def _models(models: list[str]) -> str:
    """The models a backend holds, by file name (folders dropped), at most two then a count."""
    names = [str(m).replace("\\", "/").rsplit("/", 1)[-1] for m in models]
    if len(names) > 2:
        return f"{', '.join(names[:2])} +{len(names) - 2}"
    return ", ".join(names) or "-"


def show(backends: list[dict[str, Any]]) -> None:
    """One row a backend; the tags and models columns only when some backend has any (the
    breaker's failure count, health errors and the full model list are in ``--json``)."""
    if not backends:
        raise ComfyFleetError("no backends are registered")
    tags = any(b.get("tags") for b in backends)
    models = any(b.get("warm_models") for b in backends)
    headers = ("name", "url", "state", "load", "breaker", "VRAM", "ping", "nodes",
               *(("tags",) if tags else ()), *(("models",) if models else ()))
    rows = []
    for b in backends:
        health = b.get("health") or {}
        vram = health.get("vram_free")
        row = [b["name"], b["url"], b["state"], f"{b['load']}/{b['capacity']}",
               str((b.get("breaker") or {}).get("status") or "-"),
               "-" if vram is None else f"{vram / 1024**3:.1f}G",
               "-" if health.get("latency_ms") is None else f"{health['latency_ms']:.0f} ms",
               str((b.get("node_classes") or {}).get("count", "-"))]  # classes its /object_info lists
        if tags:
            row.append(",".join(b.get("tags") or ()) or "-")
        if models:
            row.append(_models(b.get("warm_models") or []))
        rows.append(row)
    print_listing(headers, rows, keys=2)
