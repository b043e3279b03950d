"""What an asset id names: a job's output (``{job_id}.{index}``) or an upload (a UUID).

``find_asset`` answers only for assets the caller may see (anyone else's is a 404, as if it
did not exist): the record as the API shows it, and the blob behind it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from ..errors import JobNotFound
from .access import Caller, owner_of
from .context import ApiContext
from .schemas import parse_asset_id

@dataclass(frozen=True, slots=True)
class FoundAsset:
    record: dict[str, Any]  # the Asset JSON
    digest: str  # the blob
    name: str
    content_type: str
    size_bytes: int


def is_upload_id(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


async def find_asset(ctx: ApiContext, asset_id: str, caller: Caller) -> FoundAsset:
    parsed = parse_asset_id(asset_id)
    if parsed is not None:
        job_id, index = parsed
        try:
            job = await ctx.services.store.get(job_id)
        except JobNotFound:
            job = None
        if job is not None and caller.sees(job) and index < len(job.outputs):
            output = job.outputs[index]
            return FoundAsset(ctx.renderer.asset(job, output), output.hash, output.name,
                              output.content_type, output.size_bytes)
    elif is_upload_id(asset_id) and ctx.services.uploads is not None:
        upload = await ctx.services.uploads.get(asset_id)
        if upload is not None and (caller.admin or upload.owner == owner_of(caller)):
            return FoundAsset(ctx.renderer.upload(upload), upload.digest, upload.file_path,
                              upload.content_type, upload.size_bytes)
    raise JobNotFound(f"asset {asset_id} not found")
