"""Reading assets (job outputs and uploads), plus the by-hash existence probe.

An output's asset id is self-describing: ``f"{job_id}.{index}"`` (``runtime.outputs.asset_id``).
Resolving it loads the job and picks ``outputs[index]``; the bytes are the blob named by
``Output.hash``, and an output lives exactly as long as its job. An upload's id is a UUID with a
record of its own (``store/uploads.py``; written by ``api/uploads.py``).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from ..blobs import parse_digest
from ..errors import JobNotFound
from .access import Caller, get_caller, owner_of
from .asset_lookup import find_asset
from .uploads import CONTROL_CHARACTERS, parse_blake3
from .context import ApiContext, get_context
from .errors import error_response

router = APIRouter(tags=["assets"])

CHUNK_BYTES = 1 << 20
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
MAX_OFFSET_DIGITS = 18  # longer is past the end of any blob (and int() refuses > 4300 digits)


@router.get("/assets/{asset_id}")
async def get_asset(asset_id: str, ctx: ApiContext = Depends(get_context),
                    caller: Caller = Depends(get_caller)) -> dict[str, Any]:
    return (await find_asset(ctx, asset_id, caller)).record


@router.get("/assets/{asset_id}/content")
async def get_asset_content(asset_id: str, request: Request,
                            ctx: ApiContext = Depends(get_context),
                            caller: Caller = Depends(get_caller)) -> Response:
    found = await find_asset(ctx, asset_id, caller)
    blobs = ctx.services.blobs
    if not await blobs.exists(found.digest):
        raise JobNotFound(f"asset {asset_id}: its content is no longer available")
    size = await _size(ctx, found.digest)
    headers = {"Accept-Ranges": "bytes", "ETag": f'"{found.digest}"',
               "Content-Disposition": content_disposition(found.name.rsplit("/", 1)[-1]),
               "Cache-Control": "private, max-age=3600"}
    wanted = parse_range(request.headers.get("range"), size)
    if wanted == "unsatisfiable":
        return error_response(416, "range_not_satisfiable", f"the asset has {size} bytes",
                              headers={"Content-Range": f"bytes */{size}"})
    start, end, status = (0, size - 1, 200) if wanted is None else (*wanted, 206)
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(max(0, end - start + 1))
    # as stored, not through media_type: Starlette adds "; charset=utf-8" to a text/* type without one
    headers["Content-Type"] = found.content_type
    return StreamingResponse(_chunks(ctx, found.digest, start, end + 1), status_code=status,
                             headers=headers)


@router.head("/assets/by-hash/{digest}")
async def head_by_hash(digest: str, ctx: ApiContext = Depends(get_context),
                       caller: Caller = Depends(get_caller)) -> Response:
    """200 when the caller may mint an asset from this hash (``POST /assets/from-hash``): a
    ``blake3:`` hash of bytes the same owner uploaded before, or a ``sha256:`` digest of a blob
    this server holds (an admin's only: a user learns nothing of anyone else's files)."""
    blake3_hex = parse_blake3(digest)
    if blake3_hex is not None and ctx.services.uploads is not None:
        known = await ctx.services.uploads.known(owner_of(caller), blake3_hex)
        found = known is not None and await ctx.services.blobs.exists(known.digest)
    else:
        found = caller.admin and parse_digest(digest) is not None \
            and await ctx.services.blobs.exists(digest.lower())
    return Response(status_code=200 if found else 404)


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """``(start, end)`` inclusive, ``"unsatisfiable"``, or ``None`` to send everything.

    One range only; a multi-range or malformed header is ignored (RFC 9110 allows that)."""
    match = _RANGE.match(header.strip()) if header else None
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        length = _offset(last)
        if length == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - length), size - 1
    start = _offset(first)
    end = min(_offset(last), size - 1) if last else size - 1
    if last and _offset(last) < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, end


def _offset(digits: str) -> int:
    """A byte offset from the Range header; one longer than any blob counts as 10**18."""
    return int(digits) if len(digits) <= MAX_OFFSET_DIGITS else 10 ** MAX_OFFSET_DIGITS


def content_disposition(name: str) -> str:
    """The name quoted in ASCII for old clients, exact in ``filename*`` (percent-encoded).

    An output's name is whatever its ComfyUI server wrote; a control character in a header makes
    h11 drop the connection without an answer, so the ASCII name has ``_`` in its place."""
    ascii_name = CONTROL_CHARACTERS.sub("_", name).encode("ascii", "replace").decode() \
        .replace('"', "'").replace("\\", "_")
    return f"inline; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}"


async def _size(ctx: ApiContext, digest: str) -> int:
    size = getattr(ctx.services.blobs, "size", None)
    if size is not None:
        return await size(digest)
    return len(await ctx.services.blobs.open(digest))


async def _chunks(ctx: ApiContext, digest: str, start: int, stop: int) -> AsyncIterator[bytes]:
    blobs = ctx.services.blobs
    read_range = getattr(blobs, "read_range", None)
    if read_range is None:  # a BlobStore without ranged reads
        yield (await blobs.open(digest))[start:stop]
        return
    while start < stop:
        chunk = await read_range(digest, start, min(CHUNK_BYTES, stop - start))
        if not chunk:
            return
        yield chunk
        start += len(chunk)
