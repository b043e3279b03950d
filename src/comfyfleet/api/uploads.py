"""Input assets: upload, mint from a known hash, delete.

    POST   /assets            multipart: file, file_path?, content_type?, expected_hash?
                              (blake3:<hex>), tags* , expires_in? (60-604800 s)
                              -> 201, or 200 when the owner already holds these bytes;
                              413 past max_upload_bytes, 507 when the disk has no room
    POST   /assets/from-hash  {hash, file_path?, tags?, expires_in?}  a record over bytes the owner
                              sent before (blake3) or that this server holds (sha256)   -> 201
    DELETE /assets/{id}       the record (its bytes go once nothing needs them)       -> 204

The bytes stream to a temporary file beside the blob store while both hashes are computed (the
blob is named by its sha256; the contract's hash is blake3), then move into place. A job refers
to an upload with ``{"__type": "core/ASSET", "info": {"id": ...}}`` (see ``api/inputs.py``).
"""

from __future__ import annotations

import asyncio
import mimetypes
import re
import uuid
from typing import Any

from blake3 import blake3
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect
from starlette.types import Message

from ..blobs import DEFAULT_CONTENT_TYPE, BlobStoreFull, is_no_room, parse_digest
from ..errors import JobNotFound, ValidationFailed
from ..store.uploads import Upload
from . import validation
from .access import Caller, get_caller, owner_of
from .asset_lookup import find_asset, is_upload_id
from .context import ApiContext, get_context

router = APIRouter(tags=["assets"])

CHUNK_BYTES = 1 << 20
MIN_EXPIRES_S, MAX_EXPIRES_S = 60, 604_800
MAX_TAGS, MAX_TAG_CHARS, MAX_PATH_CHARS = 16, 64, 255
FROM_HASH_MAX_BYTES = 64 * 1024
FORM_FIELDS_BYTES = 64 * 1024  # what an upload's body may hold past its file
BLAKE3 = re.compile(r"^blake3:([0-9a-f]{64})$")
# RFC 9110's media type, parameters and all ("audio/L16; rate=16000"), in ASCII only: it is sent
# back as the Content-Type of the asset's content
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[ !#-\[\]-~]|\\[ -~])*"'
CONTENT_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|{_QUOTED}))*")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
FIELDS = {"file", "file_path", "content_type", "expected_hash", "tags", "expires_in"}


def uploads_of(ctx: ApiContext) -> Any:
    uploads = ctx.services.uploads
    if uploads is None:
        raise ValidationFailed("this server takes no uploads", code="not_found", status_code=404)
    return uploads


def parse_blake3(value: str) -> str | None:
    match = BLAKE3.match(value.strip().lower()) if isinstance(value, str) else None
    return match.group(1) if match else None


@router.post("/assets")
async def upload_asset(request: Request, ctx: ApiContext = Depends(get_context),
                       caller: Caller = Depends(get_caller)) -> JSONResponse:
    uploads_of(ctx)
    limit = ctx.settings.max_upload_bytes
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise validation.invalid("send the file as multipart/form-data (a part named file)")
    try:
        validation.check_declared_size(request.headers.get("content-length"), limit + FORM_FIELDS_BYTES)
    except ValidationFailed as exc:
        raise _file_too_large(limit) if exc.status_code == 413 else exc from None
    try:
        form = await _bounded(request, limit).form(
            max_files=1, max_fields=len(FIELDS) + MAX_TAGS, max_part_size=64 * 1024)
    except ClientDisconnect:
        raise validation.invalid("the client went away mid-upload", status_code=400) from None
    except ValidationFailed:
        raise
    except OSError as exc:  # spooling the file to a temporary file failed: ours, not the client's
        if is_no_room(exc):
            raise _no_room() from exc
        raise
    except Exception as exc:  # python-multipart's and Starlette's parse errors: malformed input
        raise validation.invalid(f"the multipart body cannot be read: {exc}", status_code=400) from None
    try:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise validation.invalid("the upload has no part named file", details={"field": "file"})
        fields = _fields(form, file)
        upload = await _store_file(ctx, caller, file, fields, limit)
    except BlobStoreFull as exc:
        raise _no_room() from exc
    finally:
        await form.close()
    return JSONResponse(ctx.renderer.upload(upload[0], created_new=upload[1]),
                        status_code=201 if upload[1] else 200)


@router.post("/assets/from-hash", status_code=201)
async def upload_from_hash(request: Request, ctx: ApiContext = Depends(get_context),
                           caller: Caller = Depends(get_caller)) -> dict[str, Any]:
    uploads = uploads_of(ctx)
    validation.check_declared_size(request.headers.get("content-length"), FROM_HASH_MAX_BYTES)
    body = validation.parse_json(await validation.read_body(request, FROM_HASH_MAX_BYTES))
    if not isinstance(body, dict) or not isinstance(body.get("hash"), str):
        raise validation.invalid("send {\"hash\": \"blake3:<hex>\", ...}", details={"field": "hash"})
    unknown = sorted(set(body) - {"hash", "file_path", "tags", "expires_in"})
    if unknown:
        raise validation.invalid(f"unknown field(s) {', '.join(unknown)}")
    digest, blake3_hex, size, content_type = await _known_content(ctx, caller, body["hash"])
    now = ctx.services.clock()
    file_path = _file_path(body.get("file_path"), default=f"{blake3_hex[:16]}")
    upload = Upload(id=str(uuid.uuid4()), owner=owner_of(caller), digest=digest,
                    blake3=f"blake3:{blake3_hex}", size_bytes=size, content_type=content_type,
                    file_path=file_path, created_at=now,
                    expires_at=now + _expires_in(body.get("expires_in"), ctx), tags=_tags(body.get("tags")))
    await uploads.save(upload)
    if not await ctx.services.blobs.refresh(digest):  # removed by housekeeping since the look
        await uploads.delete(upload.id)
        raise ValidationFailed(f"no content with hash {body['hash']}", code="blob_not_found", status_code=404)
    return ctx.renderer.upload(upload)


@router.delete("/assets/{asset_id}", status_code=204)
async def delete_asset(asset_id: str, ctx: ApiContext = Depends(get_context),
                       caller: Caller = Depends(get_caller)) -> Response:
    uploads = uploads_of(ctx)
    upload = await uploads.get(asset_id) if is_upload_id(asset_id) else None
    if upload is not None and (caller.admin or upload.owner == owner_of(caller)):
        await uploads.delete(asset_id)
        return Response(status_code=204)
    if "." in asset_id:  # an output: it lives as long as its job (whether or not the caller sees it)
        await find_asset(ctx, asset_id, caller)  # 404 unless the caller may see it
        raise ValidationFailed("an output is removed with its job, not on its own",
                               code="asset_in_use", status_code=409)
    raise JobNotFound(f"asset {asset_id} not found")


# -- helpers ----------------------------------------------------------------------------------
def _no_room() -> ValidationFailed:
    return ValidationFailed("the server has no room to store the file now; nothing was kept",
                            code="insufficient_storage", status_code=507)


def _file_too_large(limit: int) -> ValidationFailed:
    """The 413 of an upload, whichever check saw it first: ``details.max_bytes`` is the file's
    limit (the body may carry up to ``FORM_FIELDS_BYTES`` of form fields besides)."""
    return validation.invalid(f"an upload's file may hold at most {limit} bytes", code="payload_too_large",
                              status_code=413, details={"max_bytes": limit})


def _bounded(request: Request, limit: int) -> Request:
    """The request, its body refused with a 413 once it grows past the file's ``limit`` plus the
    form fields: the form parser spools a file to disk whole before the file is read, and a
    chunked body declares no size."""
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > limit + FORM_FIELDS_BYTES:
            raise _file_too_large(limit)
        return message

    return Request(request.scope, receive)


def _fields(form: Any, file: UploadFile) -> dict[str, Any]:
    unknown = sorted(set(form.keys()) - FIELDS)
    if unknown:
        raise validation.invalid(f"unknown field(s) {', '.join(unknown)}",
                                 details={"allowed": sorted(FIELDS)})
    texts = {name: form.get(name) for name in FIELDS - {"file", "tags"}}
    for name, value in texts.items():
        if value is not None and not isinstance(value, str):
            raise validation.invalid(f"{name} must be a plain form field", details={"field": name})
    expected = texts.get("expected_hash")
    if expected is not None and parse_blake3(expected) is None:
        raise validation.invalid("expected_hash must be blake3:<64 hex digits>",
                                 details={"field": "expected_hash"})
    content_type = texts.get("content_type") or file.content_type
    file_path = _file_path(texts.get("file_path") or file.filename, default="upload")
    if not content_type or content_type == DEFAULT_CONTENT_TYPE:
        content_type = mimetypes.guess_type(file_path)[0] or DEFAULT_CONTENT_TYPE
    if not CONTENT_TYPE.fullmatch(content_type) or len(content_type) > 127:
        raise validation.invalid("content_type must look like type/subtype, with optional ; name=value "
                                 "parameters", details={"field": "content_type"})
    return {"expected": parse_blake3(expected) if expected else None, "content_type": content_type,
            "file_path": file_path, "tags": _tags(form.getlist("tags")),
            "expires_in": texts.get("expires_in")}


async def _store_file(ctx: ApiContext, caller: Caller, file: UploadFile, fields: dict[str, Any],
                      limit: int) -> tuple[Upload, bool]:
    expires_in = _expires_in(fields["expires_in"], ctx)
    writer, hasher = ctx.services.blobs.writer(), blake3()
    try:
        while chunk := await file.read(CHUNK_BYTES):
            if writer.size + len(chunk) > limit:
                raise _file_too_large(limit)
            await asyncio.to_thread(hasher.update, chunk)
            await writer.write(chunk)
        blake3_hex = hasher.hexdigest()
        if fields["expected"] is not None and fields["expected"] != blake3_hex:
            raise ValidationFailed("the file's blake3 hash is not expected_hash", code="hash_mismatch",
                                   status_code=409, details={"expected": f"blake3:{fields['expected']}",
                                                             "received": f"blake3:{blake3_hex}"})
        digest, _ = await writer.commit(content_type=fields["content_type"])
    except BaseException:
        await writer.abort()
        raise
    owner = owner_of(caller)
    # new or not to this owner: whether anyone else holds the same bytes is not theirs to learn
    created = await ctx.services.uploads.known(owner, blake3_hex) is None
    now = ctx.services.clock()
    upload = Upload(id=str(uuid.uuid4()), owner=owner, digest=digest,
                    blake3=f"blake3:{blake3_hex}", size_bytes=writer.size,
                    content_type=fields["content_type"], file_path=fields["file_path"],
                    created_at=now, expires_at=now + expires_in, tags=fields["tags"])
    await ctx.services.uploads.save(upload, received_bytes=writer.size)
    return upload, created


async def _known_content(ctx: ApiContext, caller: Caller, claimed: str) -> tuple[str, str, int, str]:
    """(sha256 digest, blake3 hex, size, content type) of bytes this owner may mint from."""
    blake3_hex = parse_blake3(claimed)
    if blake3_hex is not None:
        known = await ctx.services.uploads.known(owner_of(caller), blake3_hex)
        if known is not None and await ctx.services.blobs.exists(known.digest):
            return known.digest, blake3_hex, known.size_bytes, known.content_type
    elif parse_digest(claimed) is not None and caller.admin and await ctx.services.blobs.exists(claimed.lower()):
        digest = claimed.lower()
        data = await ctx.services.blobs.open(digest)
        return (digest, await asyncio.to_thread(lambda: blake3(data).hexdigest()), len(data),
                await ctx.services.blobs.content_type(digest))
    elif parse_digest(claimed) is None:
        raise validation.invalid("hash must be blake3:<64 hex digits>", details={"field": "hash"})
    raise ValidationFailed(f"no content with hash {claimed}", code="blob_not_found", status_code=404)


def _file_path(value: Any, *, default: str) -> str:
    if value is None or value == "":
        return default
    if not isinstance(value, str) or len(value) > MAX_PATH_CHARS or CONTROL_CHARACTERS.search(value) \
            or value.startswith(("/", "\\")) or ".." in value.replace("\\", "/").split("/"):
        raise validation.invalid(f"file_path must be a relative path of at most {MAX_PATH_CHARS} "
                                 f"characters without '..' or control characters",
                                 details={"field": "file_path"})
    return value


def _tags(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_TAGS or not all(
            isinstance(t, str) and 0 < len(t) <= MAX_TAG_CHARS for t in value):
        raise validation.invalid(f"tags: at most {MAX_TAGS} strings of 1-{MAX_TAG_CHARS} characters",
                                 details={"field": "tags"})
    return tuple(value)


def _expires_in(value: Any, ctx: ApiContext) -> float:
    if value is None or value == "":
        return float(ctx.settings.upload_expires_s)
    try:
        seconds = int(value)
    except (TypeError, ValueError):
        seconds = -1
    if isinstance(value, bool) or not MIN_EXPIRES_S <= seconds <= MAX_EXPIRES_S:
        raise validation.invalid(f"expires_in must be whole seconds from {MIN_EXPIRES_S} to {MAX_EXPIRES_S}",
                                 details={"field": "expires_in"})
    return float(seconds)
