"""Cleanup never deletes a blob a job is about to refer to: bytes stored again (a text output
equal to an old one) count as new for the blob grace, like bytes streamed in again."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from comfyfleet.runtime.maintenance import Maintenance, MaintenanceSettings
from comfyfleet.services import ServiceConfig, open_services

DAY = 86400.0


@pytest.fixture
async def services(valkey_url, tmp_path):
    config = ServiceConfig(redis_url=valkey_url, data_dir=tmp_path, key_prefix=f"m{uuid.uuid4().hex[:8]}")
    async with open_services(config) as services:
        yield services


async def test_an_old_blob_stored_again_outlives_the_next_pass(services):
    """A job collecting bytes an old orphaned blob already holds has not saved its record yet:
    the pass between the store and the save must keep the blob it is about to name."""
    now = time.time()
    digest = await services.blobs.put(b"done", content_type="text/plain")
    os.utime(services.blobs.path(digest), (now - 9 * DAY, now - 9 * DAY))  # an old job's, deleted since

    assert await services.blobs.put(b"done", content_type="text/plain") == digest  # collected now
    report = await Maintenance(redis=services.redis, keys=services.keys, store=services.store,
                               blobs=services.blobs, settings=MaintenanceSettings(blob_grace_s=3600),
                               clock=lambda: now).run_once()

    assert report.blobs_deleted == []
    assert await services.blobs.open(digest) == b"done"
