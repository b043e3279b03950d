"""The local blob store: content-addressed files with a content-type sidecar."""

from __future__ import annotations

from comfyfleet.blobs import LocalBlobStore


async def test_the_same_bytes_again_rewrite_nothing_and_a_new_type_replaces_the_old(tmp_path):
    blobs = LocalBlobStore(tmp_path)
    digest = await blobs.put(b"png bytes", content_type="image/png")
    stored = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    before = {p: p.stat().st_ino for p in stored}
    assert await blobs.put(b"png bytes", content_type="image/png") == digest
    assert {p: p.stat().st_ino for p in stored} == before  # neither file was replaced
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == stored  # no temporary left
    await blobs.put(b"png bytes", content_type="image/webp")
    assert await blobs.content_type(digest) == "image/webp"
    assert await blobs.open(digest) == b"png bytes"
