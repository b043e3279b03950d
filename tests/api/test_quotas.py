"""At most N queued or running jobs per owner: the next submission is a 429 queue_full with
Retry-After that reserves nothing; a finished or canceled job frees its place."""

from __future__ import annotations

import pytest

from comfyfleet.apikeys import KeyRing, key_entry, new_key

from api_helpers import WORKFLOW, error_code

CAPPED, FREE = new_key(), new_key()


@pytest.fixture
def keyed(api, tmp_path):
    path = tmp_path / "keys.toml"
    path.write_text(key_entry(CAPPED, "studio-a", "user") + "max_active = 2\n"
                    + key_entry(FREE, "studio-b", "user"))
    api.services.keys = KeyRing(path).lookup
    return api


async def submit(client, key: str | None = None, **extra):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers.update(extra.pop("headers", {}))
    return await client.post("/api/v2/jobs", json={"workflow": WORKFLOW, **extra}, headers=headers)


async def test_a_key_with_max_active_gets_queue_full_past_it(keyed, client, enqueued):
    as_capped = {"Authorization": f"Bearer {CAPPED}"}
    first = (await submit(client, CAPPED)).json()
    assert (await submit(client, CAPPED)).status_code == 201
    refused = await submit(client, CAPPED, headers={"Idempotency-Key": "third-1"})
    assert refused.status_code == 429 and error_code(refused) == "queue_full"
    assert refused.headers["retry-after"] == "5"
    assert refused.json()["error"]["details"] == {"active": 2, "limit": 2}
    assert len(enqueued) == 2, "nothing of the refused job was stored or queued"
    for _ in range(3):  # another owner is not held back
        assert (await submit(client, FREE)).status_code == 201

    await client.post(f"/api/v2/jobs/{first['id']}/cancel", headers=as_capped)
    again = await submit(client, CAPPED, headers={"Idempotency-Key": "third-1"})
    assert again.status_code == 201, "a canceled job frees its place; the refused key was not used up"


@pytest.mark.parametrize("settings_overrides", [{"max_active_per_owner": 1}])
async def test_the_server_default_applies_to_every_owner(client, settings_overrides):
    assert (await submit(client, metadata={"user_id": "u1"})).status_code == 201
    refused = await submit(client, metadata={"user_id": "u1"})
    assert refused.status_code == 429 and error_code(refused) == "queue_full"
    assert (await submit(client, metadata={"user_id": "u2"})).status_code == 201


async def test_every_key_of_an_owner_shares_its_cap(api, client, tmp_path, enqueued):
    """A second key of a capped owner (one being rotated in, say) does not lift the owner's cap."""
    rotated = new_key()
    path = tmp_path / "keys.toml"
    path.write_text(key_entry(CAPPED, "studio-a", "user") + "max_active = 2\n"
                    + key_entry(rotated, "studio-a", "user"))
    api.services.keys = KeyRing(path).lookup
    assert (await submit(client, CAPPED)).status_code == 201
    assert (await submit(client, rotated)).status_code == 201
    refused = await submit(client, rotated)
    assert refused.status_code == 429 and error_code(refused) == "queue_full"
    assert refused.json()["error"]["details"] == {"active": 2, "limit": 2}
    assert len(enqueued) == 2
