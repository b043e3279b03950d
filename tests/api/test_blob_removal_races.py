"""Housekeeping removing an orphaned blob at the moment a client names its bytes again: between
the API's look (the blob is there) and the hold it writes. What was removed is said to be
missing, never accepted and then lost; the hold refreshes the blob, so a pass that looked
before it keeps it (see ``tests/recovery/test_maintenance_review_blobs.py``)."""

from __future__ import annotations

import os

import pytest
from blake3 import blake3

from comfyfleet.blobs import LocalBlobStore

from api_helpers import WORKFLOW, error_code

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


class RemovedAfterTheLook(LocalBlobStore):
    """A blob store where, once armed, a blob is removed right after it is looked for (as a
    housekeeping pass would, deleting it as unreferenced, between the look and the hold)."""

    armed = False

    async def exists(self, digest: str) -> bool:
        there = await super().exists(digest)
        if self.armed and there:
            os.unlink(self.path(digest))
        return there


@pytest.fixture
def blobs(tmp_path) -> RemovedAfterTheLook:  # type: ignore[no-untyped-def]
    return RemovedAfterTheLook(tmp_path / "blobs")


async def uploaded(client) -> str:  # type: ignore[no-untyped-def]
    response = await client.post("/api/v2/assets", files={"file": ("face.png", PNG, "image/png")})
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def test_a_mint_from_a_hash_whose_bytes_were_removed_meanwhile_is_a_404(client, blobs, redis, keys):
    await uploaded(client)
    blobs.armed = True
    minted = await client.post("/api/v2/assets/from-hash", json={"hash": f"blake3:{blake3(PNG).hexdigest()}"})
    assert minted.status_code == 404 and error_code(minted) == "blob_not_found", minted.text
    records = [key async for key in redis.scan_iter(match=keys.upload("*")) if ":upload:hash:" not in key]
    assert len(records) == 1, "no record is left over bytes that are gone"


async def test_a_job_whose_input_bytes_were_removed_meanwhile_is_refused(client, blobs, enqueued):
    asset = await uploaded(client)
    blobs.armed = True
    workflow = {**WORKFLOW, "7": {"class_type": "LoadImage",
                                  "inputs": {"image": {"__type": "core/ASSET", "info": {"id": asset}}}}}
    response = await client.post("/api/v2/jobs", json={"workflow": workflow})
    assert response.status_code == 422 and error_code(response) == "missing_asset", response.text
    assert enqueued == [], "a job whose input is gone never runs"


async def test_a_hold_makes_an_old_blob_new_again(client, blobs):
    asset = await uploaded(client)
    digest = next(iter(blobs.iter_digests()))
    os.utime(blobs.path(digest), (1_000_000, 1_000_000))  # old: a pass would find it past its grace
    workflow = {**WORKFLOW, "7": {"class_type": "LoadImage",
                                  "inputs": {"image": {"__type": "core/ASSET", "info": {"id": asset}}}}}
    response = await client.post("/api/v2/jobs", json={"workflow": workflow})
    assert response.status_code == 201, response.text
    assert os.stat(blobs.path(digest)).st_mtime > 1_000_000
