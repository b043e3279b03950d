"""What the server says is printed as it is: a backend name, tag or owner holding square brackets
is no console markup (``gpu[red]x`` lost its ``[red]``; a tag ``[/x]`` ended ``comfyfleet
backends`` with a traceback on every listing). Real API and Valkey, the CLI's own code."""

from __future__ import annotations

import io
import uuid

import httpx
import pytest
from rich.console import Console

from comfyfleet import backends_cli, client_cli
from comfyfleet.backends_cli import manage_backends
from comfyfleet.config import Settings
from comfyfleet.launch import build_app, service_config, start_api
from comfyfleet.services import open_services
from helpers.fleet import free_port


@pytest.mark.parametrize("width", [200, 40])  # a table, and one block a row when it does not fit
async def test_backend_names_and_tags_with_brackets_are_listed_as_they_are(valkey_url, tmp_path, monkeypatch,
                                                                          width):
    """Square brackets in what the server lists are printed, not read as console markup."""
    screen = io.StringIO()
    console = Console(file=screen, width=width, color_system=None)
    monkeypatch.setattr(client_cli, "console", console)
    monkeypatch.setattr(backends_cli, "console", console)
    port = free_port()
    settings = Settings(redis_url=valkey_url, data_dir=tmp_path / "data", port=port,
                        key_prefix=f"markup{uuid.uuid4().hex[:8]}")
    async with open_services(service_config(settings, valkey_url)) as services:
        api = await start_api(build_app(services, settings), "127.0.0.1", port)
        try:
            async with httpx.AsyncClient(base_url=settings.base_url, timeout=10) as http:
                added = await http.post("/api/v2/backends", json={"name": "gpu[red]x", "url": "http://127.0.0.1:9",
                                                                  "tags": ["[/x]", "[bold]lora"]})
                assert added.status_code == 201, added.text
            await manage_backends(server=settings.base_url, add=[], capacity=1, tags=[], drain=[], disable=[],
                                  enable=[], remove=[], as_json=False)
        finally:
            await api.stop()
    shown = screen.getvalue()
    assert "gpu[red]x" in shown and "[/x],[bold]lora" in shown, shown
