"""``/api/v2/backends``: the fleet at run time (list, add, drain/disable/enable, remove).

    GET    /backends              every backend: state, load, health, breaker and its transitions;
                                  and the breakers of (job type, workflow) that saw failures
    GET    /backends/{name}
    POST   /backends              {name, url, capacity?, tags?, headers?}            -> 201
    PATCH  /backends/{name}       {state?: active|draining|disabled, capacity?, tags?, headers?, url?}
    DELETE /backends/{name}       removes it and fails its running work over to other backends
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..config import http_url_parts
from ..errors import ConfigError, ValidationFailed
from ..fleetfile import FieldError, backend_from
from ..domain.backends import BACKEND_STATES
from ..store.fleet import BackendExists, BackendNotFound, BackendRecord
from . import validation
from .context import ApiContext, get_context

router = APIRouter(tags=["backends"])


def _admin(ctx: ApiContext):
    admin = getattr(ctx.services, "fleet", None)
    if admin is None:
        raise ValidationFailed("this server does not manage a fleet", code="not_found", status_code=404)
    return admin


async def _body(request: Request) -> dict[str, Any]:
    body = validation.parse_json(await request.body())
    if not isinstance(body, dict):
        raise ValidationFailed("the body must be a JSON object", code="invalid_request", status_code=400)
    return body


def _record(entry: Any, where: str) -> BackendRecord:
    """The entry checked as the fleet file's are (a URL whose host does not encode, a header
    name that is not a token or a value with CR, LF or NUL is refused: nothing could be sent
    to such a backend); a 422 naming the field otherwise."""
    try:
        return backend_from(entry, where)
    except FieldError as exc:
        raise ValidationFailed(str(exc), code="invalid_request", status_code=422,
                               details={"field": exc.field}) from None
    except ConfigError as exc:
        raise ValidationFailed(str(exc), code="invalid_request", status_code=422) from None


async def _guard(call):
    try:
        return await call
    except BackendNotFound as exc:
        raise ValidationFailed(str(exc), code="not_found", status_code=404) from None
    except BackendExists as exc:
        raise ValidationFailed(str(exc), code="conflict", status_code=409) from None
    except ConfigError as exc:
        raise ValidationFailed(str(exc), code="invalid_request", status_code=422) from None


@router.get("/backends")
async def list_backends(ctx: ApiContext = Depends(get_context)) -> dict[str, Any]:
    admin = _admin(ctx)
    return {"backends": await _guard(admin.list()),
            "workflow_breakers": await _guard(admin.workflow_breakers())}


@router.get("/backends/{name}")
async def get_backend(name: str, ctx: ApiContext = Depends(get_context)) -> dict[str, Any]:
    return await _guard(_admin(ctx).get(name))


@router.post("/backends", status_code=201)
async def add_backend(request: Request, ctx: ApiContext = Depends(get_context)) -> JSONResponse:
    admin = _admin(ctx)
    body = await _body(request)
    return JSONResponse(await _guard(admin.add(_record(body, "backend"))), status_code=201)


@router.patch("/backends/{name}")
async def update_backend(name: str, request: Request, ctx: ApiContext = Depends(get_context)) -> dict[str, Any]:
    admin = _admin(ctx)
    body = await _body(request)
    unknown = sorted(set(body) - {"state", "capacity", "tags", "headers", "url"})
    if unknown:
        raise ValidationFailed(f"unknown field(s) {', '.join(unknown)}", code="invalid_request",
                               details={"allowed": ["state", "capacity", "tags", "headers", "url"]})
    if "state" in body and body["state"] not in BACKEND_STATES:
        raise ValidationFailed(f"state must be one of {', '.join(BACKEND_STATES)}", code="invalid_request",
                               details={"field": "state", "allowed": list(BACKEND_STATES)})
    current = await _guard(admin.get(name))
    # A url stored before these checks existed (one they refuse) is not held against a PATCH that
    # leaves it alone: such a backend can still be drained, disabled or given its headers.
    stored_url = current["url"] if http_url_parts(current["url"]) is not None else "http://127.0.0.1"
    merged = {"name": name, "url": body.get("url", stored_url),
              "capacity": body.get("capacity", current["capacity"]),
              "tags": body.get("tags", current["tags"])}
    if "headers" in body:
        merged["headers"] = body["headers"]
    checked = _record(merged, f"backend {name}")
    changes: dict[str, Any] = {k: v for k, v in body.items() if k == "state"}
    for key in ("url", "capacity", "tags", "headers"):
        if key in body:
            changes[key] = getattr(checked, key)
    return await _guard(admin.update(name, changes))


@router.delete("/backends/{name}")
async def remove_backend(name: str, ctx: ApiContext = Depends(get_context)) -> dict[str, Any]:
    return await _guard(_admin(ctx).remove(name))
