"""Cleanup never deletes a blob a job is about to refer to: bytes stored again (a text output
equal to an old one) count as new for the blob grace, like bytes streamed in again."""

from __future__ import annotations

import os
import time
from pathlib import Path

from comfyfleet.blobs import LocalBlobStore, digest_of
from comfyfleet.runtime.maintenance import Maintenance, MaintenanceSettings

DAY = 86400.0


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


class StoredAgainAfterTheLook(LocalBlobStore):
    """A blob store where the same bytes are stored again (an upload, an output) right after
    the pass has listed the blobs, before it deletes any: the moment a pass looks away."""

    def __init__(self, root, data: bytes) -> None:  # type: ignore[no-untyped-def]
        super().__init__(root)
        self._data = data

    def iter_digests(self):  # type: ignore[no-untyped-def]
        yield from super().iter_digests()
        LocalBlobStore._write(Path(self.path(digest_of(self._data))), self._data, "image/png")


async def test_a_blob_stored_again_while_the_pass_runs_is_kept(services, tmp_path):
    now = time.time()
    data = b"\x89PNG a face uploaded again"
    blobs = StoredAgainAfterTheLook(tmp_path / "raced", data)
    digest = await blobs.put(data, content_type="image/png")
    os.utime(blobs.path(digest), (now - 9 * DAY, now - 9 * DAY))  # old, nobody's: deletable

    report = await Maintenance(redis=services.redis, keys=services.keys, store=services.store,
                               blobs=blobs, settings=MaintenanceSettings(blob_grace_s=3600),
                               clock=lambda: now).run_once()

    assert report.blobs_deleted == []
    assert await blobs.open(digest) == data and await blobs.content_type(digest) == "image/png"
    assert [p.name for p in Path(blobs.path(digest)).parent.iterdir() if p.name.startswith(".")] == []


async def test_an_old_blob_nobody_stores_again_still_goes(services, tmp_path):
    now = time.time()
    blobs = LocalBlobStore(tmp_path / "plain")
    digest = await blobs.put(b"orphan", content_type="text/plain")
    os.utime(blobs.path(digest), (now - 9 * DAY, now - 9 * DAY))
    report = await Maintenance(redis=services.redis, keys=services.keys, store=services.store,
                               blobs=blobs, settings=MaintenanceSettings(blob_grace_s=3600),
                               clock=lambda: now).run_once()
    assert report.blobs_deleted == [digest]
    assert not await blobs.exists(digest)
    assert list(Path(blobs.path(digest)).parent.iterdir()) == []
