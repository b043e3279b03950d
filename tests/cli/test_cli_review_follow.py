"""``comfyfleet submit --wait`` follows its job to the end across an API restart: a real API
(uvicorn) on a real Valkey, stopped and started again on its port while the CLI's own code
follows a job."""

from __future__ import annotations

import asyncio
import io
import json
import uuid

import httpx
import pytest
from rich.console import Console

from comfyfleet import client_cli
from comfyfleet.config import Settings
from comfyfleet.errors import ComfyFleetError
from comfyfleet.launch import build_app, service_config, start_api
from comfyfleet.services import open_services
from helpers.fleet import free_port

WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64}}}


async def test_submit_wait_follows_its_job_across_an_api_restart(valkey_url, tmp_path, monkeypatch):
    """An event stream the restarting server ended is opened again, not taken for the job's end."""
    screen = io.StringIO()
    monkeypatch.setattr(client_cli, "console", Console(file=screen, width=200, color_system=None))
    (tmp_path / "wf.json").write_text(json.dumps(WORKFLOW))
    port = free_port()
    settings = Settings(redis_url=valkey_url, data_dir=tmp_path / "data", port=port,
                        key_prefix=f"follow{uuid.uuid4().hex[:8]}")
    async with open_services(service_config(settings, valkey_url)) as services:
        api = await start_api(build_app(services, settings), "127.0.0.1", port)
        follow = asyncio.create_task(client_cli.submit_workflow(
            tmp_path / "wf.json", server=settings.base_url, wait=True, metadata=[], out=tmp_path / "out"))
        try:
            async with asyncio.timeout(30):
                while " queued\n" not in screen.getvalue():  # no worker: the job waits in the queue
                    assert not follow.done(), screen.getvalue()
                    await asyncio.sleep(0.02)
            job_id = screen.getvalue().split()[1]
            await api.stop()
            api = await start_api(build_app(services, settings), "127.0.0.1", port)
            async with httpx.AsyncClient(base_url=settings.base_url, timeout=10) as http:
                canceled = await http.post(f"/api/v2/jobs/{job_id}/cancel")
                assert canceled.status_code == 200, canceled.text
            with pytest.raises(ComfyFleetError) as ended:
                async with asyncio.timeout(30):
                    await follow
        finally:
            follow.cancel()
            await api.stop()
    assert str(ended.value) == f"job {job_id} ended canceled", screen.getvalue()
    assert f"job {job_id} canceled" in screen.getvalue()
