"""The comfyfleet client commands carry COMFYFLEET_API_KEY; without it a keyed server says how."""

from __future__ import annotations

import json

import pytest

from comfyfleet.apikeys import key_entry, new_key
from comfyfleet.client_cli import list_jobs, submit_workflow
from comfyfleet.errors import ComfyFleetError

from helpers.fleet import image_workflow, running_fleet


async def test_client_commands_send_the_key_from_the_environment(valkey_url, tmp_path, monkeypatch):
    key = new_key()
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(key_entry(key, "cli-user", "user"))
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(image_workflow(steps=1)))
    async with running_fleet(valkey_url, tmp_path / "data", api_keys_file=keys_file) as fleet:
        monkeypatch.delenv("COMFYFLEET_API_KEY", raising=False)
        with pytest.raises(ComfyFleetError, match="HTTP 401.*set COMFYFLEET_API_KEY"):
            await list_jobs(server=fleet.base_url, status=None, limit=5)

        monkeypatch.setenv("COMFYFLEET_API_KEY", key)
        await submit_workflow(workflow, server=fleet.base_url, wait=True, metadata=[], out=tmp_path / "out")
        assert list((tmp_path / "out").iterdir()), "the output was downloaded with the key"
        await list_jobs(server=fleet.base_url, status=None, limit=5)
        owners = {job.owner for job in await fleet.services.store.list(limit=10)}
        assert owners == {"cli-user"}
