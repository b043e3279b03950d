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


async def test_a_written_blob_small_or_spilled_lands_under_its_digest(tmp_path):
    import hashlib

    blobs = LocalBlobStore(tmp_path)
    small, big = b"a small output", bytes(range(256)) * 9000  # big: past SPILL_BYTES (2.3 MB)
    for data, pieces in ((small, [small]), (big, [big[i:i + 65536] for i in range(0, len(big), 65536)])):
        writer = blobs.writer()
        for piece in pieces:
            await writer.write(piece)
        digest, created = await writer.commit(content_type="video/mp4")
        assert digest == "sha256:" + hashlib.sha256(data).hexdigest() and created
        assert writer.size == len(data) and await blobs.open(digest) == data
        assert await blobs.content_type(digest) == "video/mp4"
        again = blobs.writer()
        for piece in pieces:
            await again.write(piece)
        assert await again.commit(content_type="video/mp4") == (digest, False), "already stored"
    assert not list((tmp_path / ".incoming").iterdir()), "no temporary file is left"


async def test_an_aborted_write_leaves_nothing(tmp_path):
    blobs = LocalBlobStore(tmp_path)
    writer = blobs.writer()
    await writer.write(b"x" * (3 << 20))
    assert list((tmp_path / ".incoming").iterdir()), "a big write spilled to disk"
    await writer.abort()
    assert not list((tmp_path / ".incoming").iterdir())
    assert list(blobs.iter_digests()) == []
