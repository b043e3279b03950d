"""Input assets: multipart upload with both hashes, dedup by hash, from-hash, delete, limits;
a job's reference is completed with its blob and the blob is held for the job."""

from __future__ import annotations

import contextlib
import hashlib
import resource

import pytest
from blake3 import blake3

from comfyfleet.apikeys import KeyRing, key_entry, new_key

from api_helpers import WORKFLOW, error_code

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


def b3(data: bytes) -> str:
    return "blake3:" + blake3(data).hexdigest()


async def upload(client, data: bytes = PNG, *, name: str = "photo.png", headers=None, **fields):
    form = {k: (v if isinstance(v, list) else str(v)) for k, v in fields.items()}
    return await client.post("/api/v2/assets", files={"file": (name, data, "image/png")}, data=form,
                             headers=headers or {})


async def test_an_upload_is_stored_once_and_served_back(client, blobs):
    first = await upload(client, file_path="inputs/photo.png", tags=["face", "ref"], expires_in=3600)
    assert first.status_code == 201, first.text
    asset = first.json()
    assert asset["hash"] == b3(PNG) and asset["size_bytes"] == len(PNG)
    assert asset["content_type"] == "image/png" and asset["file_path"] == "inputs/photo.png"
    assert asset["created_new"] is True and asset["tags"] == ["face", "ref"] and asset["job_id"] is None
    assert asset["url"].endswith(f"/api/v2/assets/{asset['id']}/content")
    assert await blobs.exists("sha256:" + hashlib.sha256(PNG).hexdigest())

    again = await upload(client)
    assert again.status_code == 200 and again.json()["created_new"] is False
    assert again.json()["id"] != asset["id"], "each upload is its own record over the same bytes"

    read = await client.get(f"/api/v2/assets/{asset['id']}")
    assert read.status_code == 200 and read.json()["hash"] == asset["hash"]
    content = await client.get(f"/api/v2/assets/{asset['id']}/content")
    assert content.content == PNG and content.headers["content-type"] == "image/png"
    part = await client.get(f"/api/v2/assets/{asset['id']}/content", headers={"Range": "bytes=8-11"})
    assert part.status_code == 206 and part.content == PNG[8:12]


async def test_a_wrong_expected_hash_is_a_409_and_keeps_nothing(client, blobs):
    other = b"different bytes"
    response = await upload(client, other, expected_hash=b3(PNG))
    assert response.status_code == 409 and error_code(response) == "hash_mismatch"
    assert not await blobs.exists("sha256:" + hashlib.sha256(other).hexdigest())
    big = b"y" * (3 << 20)  # past what is held in memory: it was written to a temporary file
    response = await upload(client, big, expected_hash=b3(PNG))
    assert response.status_code == 409 and not await blobs.exists("sha256:" + hashlib.sha256(big).hexdigest())
    assert not list((blobs.root / ".incoming").iterdir()), "the temporary file is removed"
    right = await upload(client, other, expected_hash=b3(other))
    assert right.status_code == 201


async def test_by_hash_and_from_hash_skip_sending_bytes_again(client):
    assert (await client.head(f"/api/v2/assets/by-hash/{b3(PNG)}")).status_code == 404
    missing = await client.post("/api/v2/assets/from-hash", json={"hash": b3(PNG)})
    assert missing.status_code == 404 and error_code(missing) == "blob_not_found"
    uploaded = await upload(client)
    assert uploaded.status_code == 201, uploaded.text
    probe = await client.head(f"/api/v2/assets/by-hash/{b3(PNG)}")
    assert probe.status_code == 200, probe.headers
    minted = await client.post("/api/v2/assets/from-hash", json={"hash": b3(PNG), "file_path": "again.png"})
    assert minted.status_code == 201, minted.text + str(minted.status_code)  # a new asset over the blob
    assert minted.json()["hash"] == b3(PNG) and minted.json()["file_path"] == "again.png"
    assert (await client.get(f"/api/v2/assets/{minted.json()['id']}/content")).content == PNG
    for body in ({"hash": "md5:abc"}, {"nohash": 1}, {"hash": b3(PNG), "colour": "red"},
                 {"hash": b3(PNG), "expires_in": 5}):
        response = await client.post("/api/v2/assets/from-hash", json=body)
        assert response.status_code == 422, body


async def test_the_hash_index_lasts_as_long_as_the_longest_lived_upload(client, redis, keys):
    week, hour = 7 * 86400, 3600
    assert (await upload(client, expires_in=week)).status_code == 201
    assert (await upload(client, expires_in=hour)).status_code == 200
    index = keys.upload_hash("anonymous", b3(PNG).removeprefix("blake3:"))
    assert await redis.pttl(index) > (week - 60) * 1000, "a shorter upload later does not cut it short"
    other = PNG[::-1]
    assert (await upload(client, other, expires_in=hour)).status_code == 201
    assert (await upload(client, other, expires_in=week)).status_code == 200
    assert await redis.pttl(keys.upload_hash("anonymous", b3(other).removeprefix("blake3:"))) > (week - 60) * 1000


async def test_uploads_are_private_to_their_owner(api, client, tmp_path):
    alice, bob = new_key(), new_key()
    path = tmp_path / "keys.toml"
    path.write_text(key_entry(alice, "alice", "user") + key_entry(bob, "bob", "user"))
    api.services.keys = KeyRing(path).lookup
    as_alice, as_bob = {"Authorization": f"Bearer {alice}"}, {"Authorization": f"Bearer {bob}"}
    asset = (await upload(client, headers=as_alice)).json()
    assert (await client.get(f"/api/v2/assets/{asset['id']}", headers=as_bob)).status_code == 404
    assert (await client.get(f"/api/v2/assets/{asset['id']}/content", headers=as_bob)).status_code == 404
    assert (await client.head(f"/api/v2/assets/by-hash/{b3(PNG)}", headers=as_bob)).status_code == 404
    stolen = await client.post("/api/v2/assets/from-hash", json={"hash": b3(PNG)}, headers=as_bob)
    assert stolen.status_code == 404
    assert (await client.delete(f"/api/v2/assets/{asset['id']}", headers=as_bob)).status_code == 404
    ref = {"__type": "core/ASSET", "info": {"id": asset["id"]}}
    workflow = {**WORKFLOW, "5": {"class_type": "LoadImage", "inputs": {"image": ref}}}
    refused = await client.post("/api/v2/jobs", json={"workflow": workflow}, headers=as_bob)
    assert refused.status_code == 422 and error_code(refused) == "missing_asset"
    accepted = await client.post("/api/v2/jobs", json={"workflow": workflow}, headers=as_alice)
    assert accepted.status_code == 201
    # the same bytes sent by bob: new to him, whatever the server held for alice
    bobs = await upload(client, headers=as_bob)
    assert bobs.status_code == 201 and bobs.json()["created_new"] is True, bobs.text
    again = await upload(client, headers=as_alice)
    assert again.status_code == 200 and again.json()["created_new"] is False


@pytest.mark.parametrize("settings_overrides", [{"max_upload_bytes": 1000}])
async def test_bad_uploads_get_clear_errors(client, settings_overrides):
    too_big = await upload(client, b"x" * 1001)
    assert too_big.status_code == 413 and error_code(too_big) == "payload_too_large"
    assert (await upload(client, b"x" * 1000)).status_code == 201
    cases = [
        (await client.post("/api/v2/assets", json={"file": "x"}), 422),
        (await client.post("/api/v2/assets", files={"other": ("a", b"x")}), 422),
        (await upload(client, b"x", expires_in=5), 422),
        (await upload(client, b"x", expires_in="soon"), 422),
        (await upload(client, b"x", file_path="../../etc/passwd"), 422),
        (await upload(client, b"x", file_path="/abs.png"), 422),
        (await upload(client, b"x", expected_hash="sha1:00"), 422),
        (await upload(client, b"x", colour="red"), 422),
        (await upload(client, b"x", tags=["t"] * 17), 422),
        (await client.post("/api/v2/assets", content=b"--zz\r\nnot really",
                           headers={"content-type": "multipart/form-data; boundary=zz"}), 400),
    ]
    for response, status in cases:
        assert response.status_code == status, response.text
        assert error_code(response)


async def test_delete_forgets_the_record_and_outputs_go_with_their_job(client, make_finished_job):
    asset = (await upload(client)).json()
    assert (await client.delete(f"/api/v2/assets/{asset['id']}")).status_code == 204
    assert (await client.get(f"/api/v2/assets/{asset['id']}")).status_code == 404
    assert (await client.delete(f"/api/v2/assets/{asset['id']}")).status_code == 404
    job = await make_finished_job([(b"out", "image/png", "o.png")])
    response = await client.delete(f"/api/v2/assets/{job.outputs[0].id}")
    assert response.status_code == 409 and error_code(response) == "asset_in_use"


async def test_a_job_reference_is_completed_with_its_blob_and_the_blob_is_held(client, store, redis, keys):
    asset = (await upload(client, file_path="face.png")).json()
    ref = {"__type": "core/ASSET", "info": {"id": asset["id"], "comfyfleet_blob": "sha256:" + "0" * 64}}
    workflow = {**WORKFLOW, "5": {"class_type": "LoadImage", "inputs": {"image": ref}}}
    job = (await client.post("/api/v2/jobs", json={"workflow": workflow})).json()
    stored = await store.workflow(job["id"])
    info = stored["5"]["inputs"]["image"]["info"]
    digest = "sha256:" + hashlib.sha256(PNG).hexdigest()
    assert info == {"id": asset["id"], "comfyfleet_blob": digest, "comfyfleet_name": "face.png"}, \
        "the client's value is replaced"
    held_until = await redis.zscore(keys.blobs_held, digest)
    record = await store.get(job["id"])
    assert held_until >= record.deadline_at
    echoed = await client.get(f"/api/v2/jobs/{job['id']}/workflow")
    assert echoed.json()["workflow"]["5"]["inputs"]["image"] == {"__type": "core/ASSET", "info": {"id": asset["id"]}}


@pytest.mark.parametrize("file_path", ["a\nb.png", "a\rb.png", "tab\there.png", "del\x7f.png"])
async def test_a_file_path_with_a_control_character_is_422(client, file_path):
    response = await upload(client, b"x", file_path=file_path)
    assert response.status_code == 422 and error_code(response) == "invalid_request"
    assert response.json()["error"]["details"] == {"field": "file_path"}
    assert (await upload(client, b"x", file_path="ab.png")).status_code == 201
    minted = await client.post("/api/v2/assets/from-hash", json={"hash": b3(b"x"), "file_path": file_path})
    assert minted.status_code == 422, minted.text


@pytest.mark.parametrize("content_type", ["text/plain; charset=utf-8", "audio/L16; rate=16000",
                                          'multipart/mixed; boundary="a b;c"', "audio/L16;rate=8000"])
async def test_a_content_type_with_parameters_is_kept_and_served_back(client, content_type):
    asset = await upload(client, b"x", content_type=content_type)
    assert asset.status_code == 201 and asset.json()["content_type"] == content_type, asset.text
    content = await client.get(f"/api/v2/assets/{asset.json()['id']}/content")
    assert content.status_code == 200 and content.headers["content-type"] == content_type


@pytest.mark.parametrize("content_type", ["png", "image/", "text/plain;", "text/plain; charset",
                                          "text/plain; a=b c", 'text/plain; a="open', "text/plain; a=é",
                                          "图/png", "image/png\n", "image/png\r\nX-Other: 1"])
async def test_a_content_type_that_is_not_a_media_type_is_422(client, content_type):
    response = await upload(client, b"x", content_type=content_type)
    assert response.status_code == 422 and error_code(response) == "invalid_request"
    assert response.json()["error"]["details"] == {"field": "content_type"}


def multipart_head(boundary: str, name: str = "photo.png") -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode()


@pytest.mark.parametrize("settings_overrides", [{"max_upload_bytes": 1000}])
async def test_a_chunked_upload_is_taken_and_refused_past_the_limit_before_it_is_all_read(
        client, settings_overrides):
    boundary = "chunked-boundary"
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}

    async def chunked(size: int):  # streamed: no Content-Length, chunked transfer
        for part in (multipart_head(boundary), b"x" * size, f"\r\n--{boundary}--\r\n".encode()):
            yield part

    taken = await client.post("/api/v2/assets", content=chunked(1000), headers=headers)
    assert taken.status_code == 201 and taken.json()["size_bytes"] == 1000, taken.text
    too_big = await client.post("/api/v2/assets", content=chunked(1001), headers=headers)
    assert too_big.status_code == 413 and error_code(too_big) == "payload_too_large"

    sent = []

    async def endless():
        yield multipart_head(boundary)
        while len(sent) < 1000:  # 64 MiB unless the server stops reading
            sent.append(1)
            yield b"y" * (64 * 1024)

    refused = await client.post("/api/v2/assets", content=endless(), headers=headers)
    assert refused.status_code == 413 and error_code(refused) == "payload_too_large"
    assert len(sent) <= 3, "the body is refused once past the limit, not read to its end"


@pytest.mark.parametrize("settings_overrides", [{"max_upload_bytes": 1000}])
async def test_a_413_names_the_files_limit_whichever_check_refused_it(client, settings_overrides):
    """A file over the limit is refused with the same body whether its part, the declared
    Content-Length or the body as it arrived gave it away."""
    boundary = "b"

    async def chunked(size: int):
        yield multipart_head(boundary) + b"x" * size + f"\r\n--{boundary}--\r\n".encode()

    refused = [await upload(client, b"x" * 1001), await upload(client, b"x" * 100_000),
               await client.post("/api/v2/assets", content=chunked(100_000),
                                 headers={"content-type": f"multipart/form-data; boundary={boundary}"})]
    for response in refused:
        assert response.status_code == 413 and error_code(response) == "payload_too_large", response.text
        assert response.json()["error"]["details"] == {"max_bytes": 1000}, response.text
        assert "1000 bytes" in response.json()["error"]["message"]


@contextlib.contextmanager
def files_limited_to(max_bytes: int):
    """The OS refuses to grow any file this process writes past ``max_bytes`` (EFBIG), as a
    full disk refuses with ENOSPC."""
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)


@pytest.mark.parametrize("size", [500_000, 3_000_000])  # kept in memory until stored; spooled to disk
async def test_an_upload_the_disk_has_no_room_for_is_a_507_and_leaves_nothing(client, blobs, size):
    """No room on the disk is the server's trouble, said as such: not a 500, not a 400."""
    data = bytes(range(256)) * (size // 256)
    with files_limited_to(100_000):
        refused = await upload(client, data)
    assert refused.status_code == 507 and error_code(refused) == "insufficient_storage", refused.text
    assert [p for p in blobs.root.rglob("*") if p.is_file()] == [], "no blob, sidecar or temporary file"
    stored = await upload(client, data)
    assert stored.status_code == 201 and stored.json()["size_bytes"] == len(data)
