"""The input assets a submitted workflow refers to.

Every ``{"__type": "core/ASSET", "info": {"id": ...}}`` must name an asset the submitter may see
(an upload of theirs or an output of one of their jobs), else the submission is a 422
``missing_asset``. Each reference is completed in the stored workflow with what the worker needs
to stage it on whichever backend runs the job: ``info.comfyfleet_blob`` (the ``sha256:`` digest)
and ``info.comfyfleet_name`` (its file name). Both keys are ours (a client's values are
replaced) and ``as_sent`` takes them out again when the workflow is read back. The blobs are held
until the job's deadline, so deleting the upload meanwhile does not take the bytes from under
the job.
"""

from __future__ import annotations

from typing import Any

from ..domain.asset_refs import BLOB_KEY, NAME_KEY
from ..errors import JobNotFound, ValidationFailed
from . import validation
from .access import Caller
from .asset_lookup import find_asset
from .context import ApiContext

HOLD_PAST_DEADLINE_S = 3600.0


async def resolve_inputs(ctx: ApiContext, workflow: dict[str, Any], caller: Caller) -> list[str]:
    """Complete every reference in ``workflow`` (in place); the blobs it needs."""
    digests: list[str] = []
    for ref in validation.asset_refs(workflow):
        found = None
        if ref.asset_id is not None:
            try:
                found = await find_asset(ctx, ref.asset_id, caller)
            except JobNotFound:
                found = None
        if found is None or not await ctx.services.blobs.exists(found.digest):
            raise ValidationFailed(
                f"node {ref.node_id} input {ref.input_name!r}: asset {ref.asset_id!r} not found",
                code="missing_asset",
                details={"node_id": ref.node_id, "input": ref.input_name, "asset_id": ref.asset_id})
        info = ref.ref["info"]
        info[BLOB_KEY], info[NAME_KEY] = found.digest, found.name
        digests.append(found.digest)
    return sorted(set(digests))


def as_sent(workflow: dict[str, Any]) -> dict[str, Any]:
    """The stored workflow without the keys ``resolve_inputs`` added (in place)."""
    for ref in validation.asset_refs(workflow):
        info = ref.ref.get("info")
        if isinstance(info, dict):
            info.pop(BLOB_KEY, None)
            info.pop(NAME_KEY, None)
    return workflow


async def hold_inputs(ctx: ApiContext, digests: list[str], deadline_at: float | None) -> None:
    """Hold the job's input blobs until past its deadline. A blob housekeeping removed between
    the look in ``resolve_inputs`` and the hold is a 422 ``missing_asset``; one it was about to
    remove is kept (refreshed after the hold is written)."""
    if digests and ctx.services.uploads is not None:
        until = (deadline_at or ctx.services.clock()) + HOLD_PAST_DEADLINE_S
        await ctx.services.uploads.hold(digests, until)
        for digest in digests:
            if not await ctx.services.blobs.refresh(digest):
                raise ValidationFailed("an input asset's bytes were removed meanwhile; upload it again",
                                       code="missing_asset", details={"blob": digest})
